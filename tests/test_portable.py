"""The plain-PyTorch U-Net that exports capture: the same function and state_dict as
unet_fast.UNet and, without the paper's block, as the reference; nothing but torch."""

import ast
from pathlib import Path

import pytest
import torch

from unet_fast import UNet, portable, reference

WIDTHS = (1, 8, 16, 32, 64)


def _pair(paper_block: bool, dec_chs=(64, 32, 16, 8)):
    torch.manual_seed(0)
    fused = UNet(WIDTHS, dec_chs, paper_block=paper_block).double().eval()
    plain = portable.UNet(WIDTHS, dec_chs, 2, paper_block).double().eval()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


@pytest.mark.parametrize("paper_block", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 92, 92), (2, 1, 108, 124)])
def test_equals_the_fused_network_in_float64(paper_block, shape):
    fused, plain = _pair(paper_block)
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), fused(x), rtol=1e-10, atol=1e-10)


def test_fewer_decoder_stages_than_pools():
    fused, plain = _pair(True, dec_chs=(64, 32))
    x = torch.randn(1, 1, 108, 108, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), fused(x), rtol=1e-10, atol=1e-10)


def test_without_the_paper_block_it_is_the_reference_and_loads_its_state_dict():
    torch.manual_seed(1)
    ref = reference.UNet(WIDTHS, (64, 32, 16, 8)).double().eval()
    plain = portable.UNet(WIDTHS, (64, 32, 16, 8)).double().eval()
    plain.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, 124, 92, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref(x), rtol=1e-10, atol=1e-10)


def test_scripts_with_free_sizes():
    fused, plain = _pair(True)
    scripted = torch.jit.script(plain)
    for shape in ((1, 1, 92, 100), (3, 1, 116, 92)):
        x = torch.randn(shape, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), fused(x), rtol=1e-10, atol=1e-10)


def test_imports_nothing_but_torch_and_the_standard_library():
    # it is copied into exported packages, where unet_fast may not be installed
    tree = ast.parse(Path(portable.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"torch", "typing"}, imported

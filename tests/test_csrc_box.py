"""csrc/common/box.h, the index math of the CUDA element-wise kernels, compiled for the host:
their walk over a box visits position i of its memory at step i, NCHW and channels_last, in
32- and 64-bit indices. (The CUDA kernels themselves are only compiled here, by CI's
tools/cuda_compile_check.sh.)"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = r"""
#include <cstdio>
#include "box.h"
using namespace unet_fast;

template <bool kChannelsFastest, typename index_t>
int walk_is_memory_order(const Box4& box) {
  const int64_t numel = box.size[0] * box.size[1] * box.size[2] * box.size[3];
  for (int64_t i = 0; i < numel; ++i) {
    index_t nchw[4];
    coordinates_of_linear<kChannelsFastest>(box, index_t(i), nchw);
    if (int64_t(offset_in(box, nchw)) != i) return 1;
  }
  return 0;
}

int main() {
  const Box4 contiguous{{2, 5, 3, 4}, {60, 12, 4, 1}};
  const Box4 channels_last{{2, 5, 3, 4}, {60, 1, 20, 5}};
  const Box4 window_of_channels_last{{2, 5, 2, 2}, {60, 1, 20, 5}};
  const Box4 past_int32{{1, 1, 2, 2}, {4, 4, int64_t(1) << 30, int64_t(1) << 30}};
  int failures = walk_is_memory_order<false, int32_t>(contiguous) + walk_is_memory_order<false, int64_t>(contiguous) +
                 walk_is_memory_order<true, int32_t>(channels_last) + walk_is_memory_order<true, int64_t>(channels_last);
  failures += channels_fastest(contiguous) || !channels_fastest(channels_last) || !channels_fastest(window_of_channels_last);
  failures += !fits_int32(contiguous) || fits_int32(past_int32);
  std::printf("%d failures\n", failures);
  return failures != 0;
}
"""


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_the_walk_visits_memory_in_order(tmp_path):
    (tmp_path / "walk.cpp").write_text(PROGRAM)
    subprocess.run(["c++", "-std=c++17", "-O1", "-I", str(ROOT / "csrc" / "common"), "walk.cpp", "-o", "walk"],
                   cwd=tmp_path, check=True)
    result = subprocess.run([str(tmp_path / "walk")], capture_output=True, text=True)
    assert result.stdout.strip() == "0 failures" and result.returncode == 0

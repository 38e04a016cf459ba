"""unet_fast.tuning: the measured choice of each convolution pass's algorithm. A scripted
timer picks a named candidate; every candidate agrees with float64 within the stated
tolerances; the cache is keyed by machine and version, written atomically, and a broken one
is ignored with a warning; tune() settles a whole network ahead of time."""

import json
import os
import signal
import threading
import time

import pytest
import torch
import torch.nn.functional as F

import unet_fast
from unet_fast import tuning
from unet_fast.ops import available_backends, conv3x3_bias_relu
from unet_fast.ops.conv import tuned_backward

from conftest import onednn_emulates

pytestmark = pytest.mark.skipif("cpu" not in available_backends("conv3x3_bias_relu", torch.device("cpu")),
                                reason="the C++ extension is not built")

FORWARD = torch.ops.unet_fast.conv3x3_bias_relu
BACKWARD = torch.ops.unet_fast.conv3x3_bias_relu_backward


@pytest.fixture(autouse=True)
def measuring(environment, tmp_path):
    """Measuring on, with a cache of this test's own."""
    environment.setenv("UNET_FAST_TUNE", "1")
    environment.setenv("UNET_FAST_CACHE_DIR", str(tmp_path / "cache"))
    environment.delenv("UNET_FAST_WINOGRAD")
    tuning.forget()
    yield
    tuning.forget()


def settle(shape, call):
    """Calls `call` until the pass `shape` is settled (at most 100 times)."""
    for _ in range(100):
        if not tuning.exploring(shape):
            return
        call()
    raise AssertionError(f"{shape.key()} still measured after 100 calls")


def scripted(monkeypatch, milliseconds):
    """Times every run by `milliseconds(shape, algorithm)` instead of the clock; returns the
    list of (pass, algorithm) runs."""
    runs = []

    def timed(shape, algorithm, call):
        runs.append((shape.kind, algorithm))
        return call(algorithm), milliseconds(shape, algorithm) / 1e3

    monkeypatch.setattr(tuning, "_timed", timed)
    return runs


def make(n=1, c_in=64, c_out=64, side=20, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, side, side, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) * (2 / (9 * c_in)) ** 0.5
    bias = torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1
    return [t.to(dtype) for t in (x, weight, bias)]


def test_a_scripted_timer_picks_the_named_candidate(monkeypatch):
    runs = scripted(monkeypatch, lambda shape, algorithm: 1.0 if algorithm == "winograd2" else 5.0)
    x, weight, bias = make()
    shape = tuning.ConvShape.of("forward", x, weight)
    settle(shape, lambda: conv3x3_bias_relu(x, weight, bias))
    out = conv3x3_bias_relu(x, weight, bias)
    choice = tuning.settled(shape)
    assert (choice.algorithm, choice.source) == ("winograd2", "measured")
    assert set(choice.milliseconds) == set(tuning.candidates(shape))
    assert torch.equal(out, FORWARD(x, weight, bias, True, "winograd2"))
    assert not torch.equal(out, FORWARD(x, weight, bias, True, "direct"))
    # the rule's choice once uncounted, each candidate once, then the one not far behind the
    # best twice more, then no more timing
    assert sorted(runs) == sorted([("forward", name) for name in tuning.candidates(shape)]
                                  + [("forward", tuning.cold_start(shape))] + [("forward", "winograd2")] * 2)


def test_the_first_run_of_a_pass_is_not_counted(monkeypatch):
    """A pass's first run in a process pays for fresh pages and cold caches: timed 10x slower,
    the fastest candidate is still chosen (counted, it would not be run again: over 2x the best)."""
    x, weight, bias = make()
    shape = tuning.ConvShape.of("forward", x, weight)
    fastest = tuning.cold_start(shape)
    timed = []

    def milliseconds(shape, algorithm):
        timed.append(algorithm)
        return 10.0 if len(timed) == 1 else 1.0 if algorithm == fastest else 2.0

    runs = scripted(monkeypatch, milliseconds)
    settle(shape, lambda: conv3x3_bias_relu(x, weight, bias))
    assert runs[0] == ("forward", fastest) and runs.count(("forward", fastest)) == 4  # 1 uncounted, 3 near-ties
    assert tuning.settled(shape).algorithm == fastest


def test_candidates_run_three_times_near_the_best_twice_behind_and_once_far_behind(monkeypatch):
    times = {"direct": 10.0, "nnpack": 12.0, "winograd4": 15.0, "winograd6": 19.0, "winograd2": 24.0, "nchw": 30.0,
             "winograd4-aten": 11.0, "winograd6-aten": 18.0, "winograd2-aten": 25.0}
    runs = scripted(monkeypatch, lambda shape, algorithm: times[algorithm])
    x, weight, bias = make()
    shape = tuning.ConvShape.of("forward", x, weight)
    settle(shape, lambda: conv3x3_bias_relu(x, weight, bias))
    runs.remove(("forward", tuning.cold_start(shape)))  # the pass's first run, not counted
    counts = {name: runs.count(("forward", name)) for name in tuning.candidates(shape)}
    assert counts == {name: wanted for name, wanted in [("direct", 3), ("nnpack", 3), ("winograd4-aten", 3),
                                                        ("winograd4", 2), ("winograd6-aten", 2), ("winograd6", 2),
                                                        ("winograd2", 1), ("winograd2-aten", 1), ("nchw", 1)]
                      if name in counts}


def test_the_backward_passes_are_measured_each_alone(monkeypatch):
    fastest = {"data_grad": "winograd4", "weight_grad": "nchw"}
    scripted(monkeypatch, lambda shape, algorithm: 1.0 if fastest.get(shape.kind) == algorithm else 4.0)
    x, weight, bias = make()
    out = conv3x3_bias_relu(x, weight, bias)
    grad = torch.randn(out.shape)
    for _ in range(20):
        measured = tuned_backward(grad, x, weight, out, [True, True, True])
    for kind, algorithm in fastest.items():
        assert tuning.settled(tuning.ConvShape.of(kind, x, weight)).algorithm == algorithm
    by_hand = BACKWARD(grad, x, weight, out, [True, True, True], "winograd4", "nchw")
    assert all(torch.equal(a, b) for a, b in zip(measured, by_hand))


def test_choices_are_cached_on_disk_and_read_back(monkeypatch):
    scripted(monkeypatch, lambda shape, algorithm: 1.0 if algorithm == "winograd6" else 2.0)
    x, weight, bias = make()
    shape = tuning.ConvShape.of("forward", x, weight)
    settle(shape, lambda: conv3x3_bias_relu(x, weight, bias))
    payload = json.loads(tuning.cache_path().read_text())
    assert payload["machine"] == tuning.machine()
    assert [entry["algorithm"] for entry in payload["choices"]] == ["winograd6"]
    tuning.forget()
    choice = tuning.settled(shape)
    assert (choice.algorithm, choice.source) == ("winograd6", "cache")


@pytest.mark.parametrize("changed", ["unet_fast", "torch", "threads", "kernels", "point_products"])
def test_the_cache_is_keyed_by_version_and_threads(monkeypatch, changed):
    scripted(monkeypatch, lambda shape, algorithm: 1.0 if algorithm == "winograd6" else 2.0)
    x, weight, bias = make()
    shape = tuning.ConvShape.of("forward", x, weight)
    for _ in range(20):
        conv3x3_bias_relu(x, weight, bias)
    before = tuning.cache_path()
    if changed == "unet_fast":
        monkeypatch.setattr(unet_fast, "__version__", "0.0.0-other")
    elif changed == "kernels":  # the extension rebuilt
        monkeypatch.setattr(tuning, "kernels_build", lambda: "another-build")
    elif changed == "point_products":  # UNET_FAST_POINT_GEMM=0, or another CPU's kernel
        monkeypatch.setattr(tuning, "_point_products_kernel", lambda: "another-kernel")
    elif changed == "torch":
        monkeypatch.setattr(torch, "__version__", "1.0.0-other")
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(threads + 1)
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    try:
        assert tuning.cache_path() != before
        assert tuning.settled(shape).source == "rule"
    finally:
        if changed == "threads":
            torch.set_num_threads(threads)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 1, "machine": {}, "choices": []}),
                                     json.dumps({"format": 1, "choices": [{"shape": {"kind": "forward"}}]})])
def test_a_broken_cache_is_ignored_with_a_warning_and_replaced(monkeypatch, content):
    x, weight, bias = make()
    shape = tuning.ConvShape.of("forward", x, weight)
    tuning.cache_path().parent.mkdir(parents=True)
    tuning.cache_path().write_text(content)
    with pytest.warns(RuntimeWarning, match="ignoring the convolution tuning cache .*conv-algorithms-"):
        assert tuning.settled(shape).source == "rule"
    scripted(monkeypatch, lambda shape, algorithm: 1.0)
    settle(shape, lambda: conv3x3_bias_relu(x, weight, bias))
    assert json.loads(tuning.cache_path().read_text())["machine"] == tuning.machine()


def test_measuring_off_takes_the_rule_and_writes_nothing(monkeypatch, environment):
    environment.setenv("UNET_FAST_TUNE", "0")
    runs = scripted(monkeypatch, lambda shape, algorithm: 1.0)
    x, weight, bias = make()
    for _ in range(20):
        out = conv3x3_bias_relu(x, weight, bias)
    shape = tuning.ConvShape.of("forward", x, weight)
    assert runs == [] and not tuning.cache_path().exists()
    assert tuning.settled(shape).source == "rule"
    assert torch.equal(out, FORWARD(x, weight, bias, True, tuning.cold_start(shape)))


# Norm-wise error bounds against float64 of the same inputs: fp32 (Winograd's transforms: a
# few 1e-6, docs/winograd.md), fp64, and bf16 (rounded operands or products: up to 5e-3).
NORM_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2}


def relative_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layer", [(3, 16, 22), (64, 64, 20), (128, 256, 13)], ids=str)
def test_every_candidate_agrees_with_float64(dtype, layer):
    c_in, c_out, side = layer
    x, weight, bias = make(2, c_in, c_out, side, dtype=dtype)
    x64, weight64, bias64 = (t.double() for t in (x, weight, bias))
    want = F.relu(F.conv2d(x64, weight64, bias64))
    forward = tuning.ConvShape.of("forward", x, weight)
    for algorithm in tuning.candidates(forward):
        out = FORWARD(x, weight, bias, True, algorithm)
        assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
        assert relative_error(out, want) <= NORM_RTOL[dtype], algorithm
    grad = torch.randn(want.shape, dtype=torch.float64).to(dtype)
    masked = grad.double() * (want > 0)
    want_x = torch.nn.grad.conv2d_input(x.shape, weight64, masked)
    want_weight = torch.nn.grad.conv2d_weight(x64, weight.shape, masked)
    for algorithm in tuning.candidates(tuning.ConvShape.of("data_grad", x, weight)):
        grad_x = BACKWARD(grad, x, weight, want.to(dtype), [True, False, False], algorithm, "direct")[0]
        assert grad_x.dtype == dtype and relative_error(grad_x, want_x) <= NORM_RTOL[dtype], algorithm
    for algorithm in tuning.candidates(tuning.ConvShape.of("weight_grad", x, weight)):
        grad_weight = BACKWARD(grad, x, weight, want.to(dtype), [False, True, False], "direct", algorithm)[1]
        assert grad_weight.dtype == dtype and grad_weight.stride() == weight.stride()
        assert relative_error(grad_weight, want_weight) <= NORM_RTOL[dtype], algorithm


@pytest.mark.parametrize("layer", [(3, 16, 22), (64, 64, 20)], ids=str)
def test_every_bf16_candidate_takes_float32_parameters(layer):
    """Autocast's float32 weight and bias, as the CPU ops get them with bf16 activations: every
    candidate agrees with float64 within bf16's bound, and returns their gradients in float32
    with the weight's strides; those computed in fp32 are not rounded to bf16 on the way
    (fp32's bound, on the bf16 operands)."""
    c_in, c_out, side = layer
    x, weight, bias = make(2, c_in, c_out, side)
    x = x.bfloat16()
    x64, weight64, bias64 = (t.double() for t in (x, weight, bias))
    want = F.relu(F.conv2d(x64, weight64, bias64))
    for algorithm in tuning.candidates(tuning.ConvShape.of("forward", x, weight)):
        out = FORWARD(x, weight, bias, True, algorithm)
        assert out.dtype == torch.bfloat16 and relative_error(out, want) <= NORM_RTOL[torch.bfloat16], algorithm
    grad = torch.randn(want.shape, dtype=torch.float64).bfloat16()
    masked = grad.double() * (want > 0)
    want_x = torch.nn.grad.conv2d_input(x.shape, weight64, masked)
    want_weight = torch.nn.grad.conv2d_weight(x64, weight.shape, masked)
    for algorithm in tuning.candidates(tuning.ConvShape.of("data_grad", x, weight)):
        grad_x = BACKWARD(grad, x, weight, want.bfloat16(), [True, False, False], algorithm, "direct")[0]
        assert grad_x.dtype == torch.bfloat16
        assert relative_error(grad_x, want_x) <= NORM_RTOL[torch.bfloat16], algorithm
    for algorithm in tuning.candidates(tuning.ConvShape.of("weight_grad", x, weight)):
        _, grad_weight, grad_bias = BACKWARD(grad, x, weight, want.bfloat16(), [False, True, True], "direct", algorithm)
        assert grad_weight.dtype == grad_bias.dtype == torch.float32 and grad_weight.stride() == weight.stride()
        bound = NORM_RTOL[torch.float32 if algorithm.startswith("float:") else torch.bfloat16]
        assert relative_error(grad_weight, want_weight) <= bound, algorithm
        assert relative_error(grad_bias, masked.sum((0, 2, 3))) <= NORM_RTOL[torch.float32]


def test_bf16_candidates_include_fp32_and_native_kernels_only_where_native():
    x, weight, _ = make(1, 64, 64, 20, dtype=torch.bfloat16)
    found = tuning.candidates(tuning.ConvShape.of("forward", x, weight))
    assert {"float:direct", "float:winograd4", "float:winograd6"} <= set(found)
    assert ("direct" in found) == (not onednn_emulates(torch.bfloat16))


def test_products_by_aten_are_a_candidate_where_our_kernel_would_run_them():
    """winogradN-aten differs from winogradN only in fp32 forwards and data gradients whose
    transformed weights fit in cache, where our products kernel runs: only there is it measured."""
    by_aten = {"winograd2-aten", "winograd4-aten", "winograd6-aten"} if tuning._point_products_kernel() else set()
    narrow, wide = make(1, 64, 64, 20)[:2], make(1, 512, 512, 20)[:2]
    for kind in ("forward", "data_grad"):
        found = tuning.candidates(tuning.ConvShape.of(kind, *narrow))
        assert {name for name in found if name.endswith("-aten")} == by_aten
        assert not any(name.endswith("-aten") for name in tuning.candidates(tuning.ConvShape.of(kind, *wide)))
        in_fp64 = tuning.ConvShape.of(kind, *(t.double() for t in narrow))
        assert not any(name.endswith("-aten") for name in tuning.candidates(in_fp64))
    assert not any(name.endswith("-aten") for name in tuning.candidates(tuning.ConvShape.of("weight_grad", *narrow)))


def test_the_unfolded_forward_is_a_candidate_where_the_pixels_are_fewer_than_the_output_channels():
    few = tuning.ConvShape("forward", "float32", 2, 512, 32, 4, 4)  # 32 pixels for 32 channels
    many = tuning.ConvShape("forward", "float32", 2, 512, 31, 4, 4)
    assert "unfold" in tuning.candidates(few) and "unfold" not in tuning.candidates(many)
    assert "unfold" not in tuning.candidates(tuning.ConvShape("data_grad", "float32", 2, 512, 32, 4, 4))


@pytest.mark.parametrize("c_out", [252, 253], ids=["fits", "over"])
def test_the_products_by_aten_are_a_candidate_up_to_the_kernels_weight_limit(c_out):
    """F(6x6) from 130 channels: 252 output channels take 64 x 130 x 252 x 4 bytes of transformed
    weights, just within the 8 MiB our kernel multiplies by (csrc/cpu/point_gemm.h), 253 just
    over it. winograd6-aten is a candidate exactly where it computes something else than
    winograd6: our kernel's sums of 130 terms, in two parts, round differently from ATen's."""
    if tuning._point_products_kernel() is None:
        pytest.skip("our products kernel does not run on this CPU (no AVX2)")
    x, weight, bias = make(1, 130, c_out, 8)
    shape = tuning.ConvShape.of("forward", x, weight)
    differs = not torch.equal(FORWARD(x, weight, bias, False, "winograd6"),
                              FORWARD(x, weight, bias, False, "winograd6-aten"))
    assert ("winograd6-aten" in tuning.candidates(shape)) == differs == (c_out == 252)


@pytest.mark.parametrize("name,message", [
    ("fast", "unknown conv3x3 algorithm 'fast'"),
    ("direct-aten", "unknown conv3x3 algorithm 'direct-aten'"),
    ("float:direct", "computes bf16/fp16 in fp32"),
])
def test_an_algorithm_that_cannot_run_is_refused_by_name(name, message):
    x, weight, bias = make()
    with pytest.raises(RuntimeError, match=message):
        FORWARD(x, weight, bias, True, name)


def test_bf16_refuses_large_winograd_blocks_in_bf16():
    x, weight, bias = make(dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="bf16 takes winograd2, or float:winograd4/6"):
        FORWARD(x, weight, bias, True, "winograd4")


def test_tune_settles_every_pass_of_a_network_and_leaves_gradients_alone():
    model = unet_fast.UNet(enc_chs=(1, 8, 16), dec_chs=(16, 8))
    found = tuning.tune(model, 44)
    kinds = {(c.shape.kind, c.shape.c_in, c.shape.c_out) for c in found}
    assert {("forward", 1, 8), ("data_grad", 8, 8), ("weight_grad", 1, 8), ("weight_grad", 8, 8)} <= kinds
    assert all(c.source == "measured" and c.algorithm in c.milliseconds for c in found)
    assert all(p.grad is None for p in model.parameters())
    assert "measured ms" in tuning.format_choices(found)
    again = tuning.tune(model, 44)  # settled now: the same passes, read back
    assert {c.shape for c in again} == {c.shape for c in found}


def test_tune_refuses_when_measuring_is_off(environment):
    environment.setenv("UNET_FAST_TUNE", "0")
    with pytest.raises(RuntimeError, match="UNET_FAST_TUNE=0"):
        tuning.tune(unet_fast.UNet(enc_chs=(1, 8, 16), dec_chs=(16, 8)), 44)


def test_a_child_forked_while_another_thread_holds_the_tables_uses_them():
    """fork() waits for the tables' lock and the child gets a new one: a child forked while
    another thread held it (a DataLoader worker, say) would wait for it forever. A child that
    hangs is ended by its alarm."""
    x, weight, _ = make(c_in=4, c_out=4, side=8)
    held = threading.Event()

    def hold_for_a_while():
        with tuning._lock:
            held.set()
            time.sleep(0.3)

    holder = threading.Thread(target=hold_for_a_while)
    holder.start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)
        status = 1
        try:
            tuning.exploring(tuning.ConvShape.of("forward", x, weight))
            status = 0
        finally:
            os._exit(status)
    holder.join()
    assert os.waitpid(pid, 0)[1] == 0


@pytest.mark.parametrize("block", [2, 4, 6])
def test_bf16_winograd_in_float_is_the_fp32_computation_rounded_once(block):
    # float:winogradN reads and writes bf16 but transforms and multiplies in float: bit for bit
    # the fp32 Winograd of the same (bf16-exact) values, rounded at the end.
    x, weight, bias = make(2, 64, 32, 17, dtype=torch.bfloat16)
    fp32 = [t.float() for t in (x, weight, bias)]
    name = f"winograd{block}"
    out = FORWARD(x, weight, bias, True, "float:" + name)
    assert torch.equal(out, FORWARD(*fp32, True, name).bfloat16())
    grad = torch.randn(out.shape).bfloat16()
    got = BACKWARD(grad, x, weight, out, [True, True, True], "float:" + name, "float:" + name)
    want = BACKWARD(grad.float(), fp32[0], fp32[1], out.float(), [True, True, True], name, name)
    for ours, theirs in zip(got, want):
        assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs.bfloat16())

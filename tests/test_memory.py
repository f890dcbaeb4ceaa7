"""The memory equations (infsum.engine.memory) against a loop-by-loop reading of the paper (issue 3)
and of each memory variant (issue 11)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from infsum.engine.memory import VARIANTS, MemoryState, gate, get_variant, read_memory, sigma, update_memory
from infsum.errors import ConfigError

B, H, N, DK, DV = 2, 3, 5, 4, 6


def _sigma_ref(x: float) -> float:
    return x + 1.0 if x > 0 else math.exp(x)  # ELU(x) + 1


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _memory(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A memory as left by one linear write of N random keys/values (positive z, as in use)."""
    sk = _rand(B, H, N, DK, seed=seed).apply_(_sigma_ref)
    v = _rand(B, H, N, DV, seed=seed + 1)
    M = torch.einsum("bhnd,bhne->bhde", sk, v)
    return M.float(), sk.sum(2).float()


def _read_ref(sq: torch.Tensor, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """A_mem[b, h, t, e] = sum_d sq[t, d] M[d, e] / sum_d sq[t, d] z[d], one scalar at a time."""
    out = torch.zeros(*sq.shape[:-1], M.shape[-1], dtype=torch.float64)
    for b in range(sq.shape[0]):
        for h in range(sq.shape[1]):
            for t in range(sq.shape[2]):
                den = sum(float(sq[b, h, t, d]) * float(z[b, h, d]) for d in range(sq.shape[3]))
                for e in range(M.shape[-1]):
                    num = sum(float(sq[b, h, t, d]) * float(M[b, h, d, e]) for d in range(sq.shape[3]))
                    out[b, h, t, e] = num / den
    return out


def _update_ref(sk, v, M, z, rule):
    """M += sum_t sk_t^T (v_t [- sk_t M_old / (sk_t z_old)]), z += sum_t sk_t, token by token."""
    M_new, z_new = M.double().clone(), z.double().clone()
    for b in range(sk.shape[0]):
        for h in range(sk.shape[1]):
            for t in range(sk.shape[2]):
                k_t, v_t = sk[b, h, t].double(), v[b, h, t].double()
                if rule == "delta":
                    den = sum(float(k_t[d]) * float(z[b, h, d]) for d in range(DK))
                    v_t = v_t - torch.stack(
                        [sum(k_t[d] * M[b, h, d, e] for d in range(DK)) / den for e in range(DV)]
                    )
                for d in range(DK):
                    M_new[b, h, d] += k_t[d] * v_t
                    z_new[b, h, d] += k_t[d]
    return M_new, z_new


def test_sigma_is_elu_plus_one_in_float32():
    x = _rand(50, seed=0).to(torch.bfloat16)
    out = sigma(x)
    assert out.dtype == torch.float32
    assert_close(out.double(), x.double().apply_(_sigma_ref))
    assert (out > 0).all()


def test_read_matches_the_paper_equation():
    M, z = _memory(seed=1)
    sq = sigma(_rand(B, H, N, DK, seed=3))
    assert_close(read_memory(sq, M, z).double(), _read_ref(sq, M, z))


def test_empty_memory_reads_as_nothing():
    assert read_memory(sigma(_rand(B, H, N, DK, seed=4)), None, None) is None


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_update_matches_the_paper_equation(rule):
    M, z = _memory(seed=5)
    sk = sigma(_rand(B, H, N, DK, seed=7))
    v = _rand(B, H, N, DV, seed=8).float()
    M_ref, z_ref = _update_ref(sk, v, M, z, rule)
    M_new, z_new = update_memory(sk, v, M, z, rule=rule)
    assert M_new.dtype == z_new.dtype == torch.float32
    assert_close(M_new.double(), M_ref, rtol=1e-5, atol=1e-5)
    assert_close(z_new.double(), z_ref)


def test_delta_and_linear_differ_once_memory_holds_something():
    M, z = _memory(seed=9)
    sk, v = sigma(_rand(B, H, N, DK, seed=10)), _rand(B, H, N, DV, seed=11).float()
    assert not torch.allclose(
        update_memory(sk, v, M, z, rule="delta")[0], update_memory(sk, v, M, z, rule="linear")[0]
    )


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_first_write_into_empty_memory_is_the_plain_outer_product(rule):
    sk, v = sigma(_rand(B, H, N, DK, seed=12)), _rand(B, H, N, DV, seed=13).to(torch.bfloat16)
    M_ref, z_ref = _update_ref(sk, v, torch.zeros(B, H, DK, DV), torch.zeros(B, H, DK), "linear")
    M, z = update_memory(sk, v, None, None, rule=rule)
    assert M.dtype == torch.float32
    assert_close(M.double(), M_ref, rtol=1e-5, atol=1e-5)
    assert_close(z.double(), z_ref)


def test_delta_rule_does_not_rewrite_what_memory_already_returns():
    """Writing the same key/value pairs twice with the delta rule changes M less than linear does."""
    sk, v = sigma(_rand(1, 1, 1, DK, seed=14)), _rand(1, 1, 1, DV, seed=15).float()
    M, z = update_memory(sk, v, None, None, rule="delta")
    M2, _ = update_memory(sk, v, M, z, rule="delta")
    assert_close(M2, M)  # a single pair is retrieved exactly, so nothing new is written


def test_gate_mixes_per_query_head():
    hq = 4
    a_mem, a_dot = _rand(B, hq, N, DV, seed=16).float(), _rand(B, hq, N, DV, seed=17).float()
    beta = torch.tensor([-2.0, 0.0, 1.5, 30.0])
    ref = torch.empty_like(a_dot)
    for h in range(hq):
        s = 1.0 / (1.0 + math.exp(-float(beta[h])))
        ref[:, h] = s * a_mem[:, h] + (1 - s) * a_dot[:, h]
    assert_close(gate(a_mem, a_dot, beta), ref)
    assert_close(gate(None, a_dot, beta), gate(torch.zeros_like(a_mem), a_dot, beta))


def test_gate_returns_the_local_dtype():
    a_dot = _rand(B, 2, N, DV, seed=18).to(torch.bfloat16)
    assert gate(_rand(B, 2, N, DV, seed=19).float(), a_dot, torch.zeros(2)).dtype == torch.bfloat16


def test_memory_state_detach_and_move_keep_values():
    M, z = _memory(seed=20)
    state = MemoryState((M.requires_grad_(),), (z,))
    d = state.detach()
    assert not d.M[0].requires_grad and d.n_layers == 1
    assert torch.equal(d.to("cpu").M[0], M.detach())


# ---- variants (issue 11): each against its own token-by-token loop ------------------------------

_VARIANT_NAMES = [n for n in VARIANTS if n != "paper"]  # the paper's has the loop tests above


def _features_ref(x: torch.Tensor, name: str) -> torch.Tensor:
    """phi(x) one token at a time: ELU + 1 per element, or x / ||x|| over d_k."""
    out = torch.empty_like(x, dtype=torch.float64)
    for idx in torch.cartesian_prod(*(torch.arange(s) for s in x.shape[:-1])):
        row = [float(t) for t in x[tuple(idx)]]
        if VARIANTS[name].features is sigma:
            out[tuple(idx)] = torch.tensor([_sigma_ref(t) for t in row], dtype=torch.float64)
        else:
            norm = math.sqrt(sum(t * t for t in row))
            out[tuple(idx)] = torch.tensor([t / norm for t in row], dtype=torch.float64)
    return out


def _held_ref(f: list[float], M: torch.Tensor, z: list[float], normaliser: str) -> list[float]:
    """What memory returns for one feature row f: sum_d f_d M[d] (over sum_d f_d z_d with a z)."""
    num = [sum(f[d] * float(M[d, e]) for d in range(len(f))) for e in range(M.shape[1])]
    if normaliser in ("z", "corrected-z"):
        den = sum(f[d] * z[d] for d in range(len(f)))
        return [x / den for x in num]
    if normaliser == "rms":
        rms = math.sqrt(sum(x * x for x in num) / len(num) + 1e-6)
        return [x / rms for x in num]
    return num


def _variant_read_ref(fq, M, z, normaliser):
    out = torch.zeros(*fq.shape[:-1], M.shape[-1], dtype=torch.float64)
    for b in range(fq.shape[0]):
        for h in range(fq.shape[1]):
            zb = [float(x) for x in z[b, h]]
            for t in range(fq.shape[2]):
                f = [float(x) for x in fq[b, h, t]]
                out[b, h, t] = torch.tensor(_held_ref(f, M[b, h], zb, normaliser), dtype=torch.float64)
    return out


def _variant_update_ref(fk, v, M, z, rule, normaliser):
    """Token by token: M += f^T (v [- held_old(f)]); z += gamma f, gamma = max(0, 1 - f.z_old/|f|^2)
    for corrected-z, else 1. The write's retrieval (delta) never normalises by RMS."""
    M_new, z_new = M.double().clone(), z.double().clone()
    held_norm = "none" if normaliser == "rms" else normaliser
    for b in range(fk.shape[0]):
        for h in range(fk.shape[1]):
            z_old = [float(x) for x in z[b, h]]
            for t in range(fk.shape[2]):
                f = [float(x) for x in fk[b, h, t]]
                v_t = [float(x) for x in v[b, h, t]]
                if rule == "delta":
                    held = _held_ref(f, M[b, h], z_old, held_norm)
                    v_t = [a - c for a, c in zip(v_t, held, strict=True)]
                g = 1.0
                if normaliser == "corrected-z":
                    g = max(
                        0.0, 1.0 - sum(a * c for a, c in zip(f, z_old, strict=True)) / sum(a * a for a in f)
                    )
                for d in range(DK):
                    M_new[b, h, d] += f[d] * torch.tensor(v_t, dtype=torch.float64)
                    z_new[b, h, d] += g * f[d]
    return M_new, z_new


@pytest.mark.parametrize("name", _VARIANT_NAMES)
def test_variant_features_match_the_loop(name):
    x = _rand(B, H, N, DK, seed=30).float()
    out = VARIANTS[name].features(x)
    assert out.dtype == torch.float32
    assert_close(out.double(), _features_ref(x, name), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", _VARIANT_NAMES)
def test_variant_read_matches_the_loop(name):
    var = VARIANTS[name]
    fk = var.features(_rand(B, H, N, DK, seed=31).float())
    M, z = var.update(fk, _rand(B, H, N, DV, seed=32).float(), None, None, rule="linear")
    fq = var.features(_rand(B, H, N, DK, seed=33).float())
    assert_close(
        var.read(fq, M, z).double(), _variant_read_ref(fq, M, z, var.normaliser), rtol=1e-5, atol=1e-5
    )
    assert var.read(fq, None, None) is None


@pytest.mark.parametrize("rule", ["linear", "delta"])
@pytest.mark.parametrize("name", _VARIANT_NAMES)
def test_variant_update_matches_the_loop(name, rule):
    var = VARIANTS[name]
    fk0 = var.features(_rand(B, H, N, DK, seed=34).float())
    M, z = var.update(fk0, _rand(B, H, N, DV, seed=35).float(), None, None, rule=rule)
    fk, v = var.features(_rand(B, H, N, DK, seed=36).float()), _rand(B, H, N, DV, seed=37).float()
    M_ref, z_ref = _variant_update_ref(fk, v, M, z, rule, var.normaliser)
    M_new, z_new = var.update(fk, v, M, z, rule=rule)
    assert M_new.dtype == z_new.dtype == torch.float32
    assert_close(M_new.double(), M_ref, rtol=1e-5, atol=1e-5)
    assert_close(z_new.double(), z_ref, rtol=1e-5, atol=1e-5)
    first_M, first_z = var.update(fk, v, None, None, rule=rule)  # empty memory: the plain outer product
    assert_close(
        first_M.double(), torch.einsum("bhnd,bhne->bhde", fk.double(), v.double()), rtol=1e-5, atol=1e-5
    )
    assert_close(first_z, fk.sum(2))


def test_paper_variant_is_the_papers_equations():
    var = VARIANTS["paper"]
    M, z = _memory(seed=38)
    x, v = _rand(B, H, N, DK, seed=39).float(), _rand(B, H, N, DV, seed=40).float()
    assert torch.equal(var.features(x), sigma(x))
    assert torch.equal(var.read(sigma(x), M, z), read_memory(sigma(x), M, z))
    for rule in ("linear", "delta"):
        for a, b in zip(
            var.update(sigma(x), v, M, z, rule=rule), update_memory(sigma(x), v, M, z, rule=rule), strict=True
        ):
            assert torch.equal(a, b)


def test_armt_normaliser_does_not_grow_when_a_stored_key_is_written_again():
    var = VARIANTS["armt"]
    fk, v = sigma(_rand(1, 1, 1, DK, seed=41)), _rand(1, 1, 1, DV, seed=42).float()
    M, z = var.update(fk, v, None, None, rule="delta")
    _, z_paper = VARIANTS["paper"].update(fk, v, M, z, rule="delta")
    _, z_armt = var.update(fk, v, M, z, rule="delta")
    assert_close(z_armt, z)  # already held: gamma = 0
    assert_close(z_paper, 2 * z)  # the paper's z counts the key twice


@pytest.mark.parametrize("name", ["l2", "l2-rms"])
def test_l2_delta_rule_erases_and_rewrites_a_key(name):
    """With unit keys, re-writing key k with a new value makes k read back the new value exactly."""
    var = VARIANTS[name]
    fk = var.features(_rand(1, 1, 1, DK, seed=43).float())
    v1, v2 = _rand(1, 1, 1, DV, seed=44).float(), _rand(1, 1, 1, DV, seed=45).float()
    M, z = var.update(fk, v1, None, None, rule="delta")
    M, z = var.update(fk, v2, M, z, rule="delta")
    assert_close(fk @ M, v2, rtol=1e-5, atol=1e-5)


def test_unknown_variant_names_the_choices():
    choices = "choose one of paper, armt, l2, l2-rms"
    with pytest.raises(ConfigError, match=f"unknown memory variant 'nope': {choices}"):
        get_variant("nope")
    assert get_variant("armt") is VARIANTS["armt"]

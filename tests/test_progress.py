"""Progress bars: large transfers show one (when enabled), small ones and disabled runs don't."""

from fedchain.progress import MIN_TRANSFER_BYTES, transfer


def _run(monkeypatch, capsys, setting, size):
    monkeypatch.setenv("FEDCHAIN_PROGRESS", setting)
    chunk = b"x" * (1 << 20)
    chunks = [chunk] * (size // len(chunk))
    assert b"".join(transfer(iter(chunks), "download test")) == b"".join(chunks)
    return capsys.readouterr().err


def test_large_transfer_shows_a_bar_and_passes_bytes_through(monkeypatch, capsys):
    assert "download test" in _run(monkeypatch, capsys, "1", 2 * MIN_TRANSFER_BYTES)


def test_small_transfer_and_disabled_progress_stay_quiet(monkeypatch, capsys):
    assert _run(monkeypatch, capsys, "1", MIN_TRANSFER_BYTES // 2) == ""
    assert _run(monkeypatch, capsys, "0", 2 * MIN_TRANSFER_BYTES) == ""

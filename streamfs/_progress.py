"""Progress bars for long work, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm import tqdm


class ProgressBars:
    """One byte-counting bar per phase ("hashing", "uploading", ...)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bars: dict[str, tqdm] = {}

    def update(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(phase)
        if bar is None:
            bar = tqdm(
                total=total,
                desc=phase,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
            )
            self._bars[phase] = bar
        bar.update(done - bar.n)

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for bar in self._bars.values():
            bar.close()

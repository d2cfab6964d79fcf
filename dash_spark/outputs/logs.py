"""Per-phenotype log lines that stay readable at thousands of phenotypes: the first few phenotypes
get their own line, the rest one summary line (their figures are in ``summary.tsv``/``.json``)."""

from __future__ import annotations

import logging

#: phenotypes logged one line each; past this, one summary line per kind of line
PER_PHENOTYPE_LINES = 5


class PhenotypeLines:
    """``line(i, fmt, *args)`` logs phenotype ``i``'s line while ``i < PER_PHENOTYPE_LINES``;
    ``done(n, what)`` then says how many were not shown."""

    def __init__(self, log: logging.Logger, limit: int = PER_PHENOTYPE_LINES):
        self.log, self.limit, self.hidden = log, limit, 0

    def line(self, i: int, fmt: str, *args) -> None:
        if i < self.limit:
            self.log.info(fmt, *args)
        else:
            self.hidden += 1

    def done(self, what: str) -> None:
        if self.hidden:
            self.log.info("... and %d more phenotype(s) %s", self.hidden, what)


__all__ = ["PER_PHENOTYPE_LINES", "PhenotypeLines"]

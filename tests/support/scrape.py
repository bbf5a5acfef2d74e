"""A Prometheus /metrics page as the tests read it: fetched like a scraper, parsed by
prometheus_client's own parser."""

import asyncio
import time
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 10.0


class Page:
    """One scrape: every sample, and every name it declares."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))

    def find(self, name: str, **labels: str) -> float | None:
        """The sample ``name`` with exactly these labels; None when there is none."""
        for family in self.families:
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly these labels, which must be there."""
        found = self.find(name, **labels)
        assert found is not None, f"no sample {name} {labels} in:\n{self.text}"
        return found

    def labels(self, name: str, label: str) -> set[str]:
        """The values of ``label`` among the samples of ``name``."""
        return {
            sample.labels[label]
            for family in self.families
            for sample in family.samples
            if sample.name == name and label in sample.labels
        }

    def names(self) -> set[str]:
        """Every family declared (# TYPE, even without a sample yet) and every sample name
        (counters' _total, histograms' _bucket, _sum, _count)."""
        declared = {family.name for family in self.families}
        sampled = {sample.name for family in self.families for sample in family.samples}
        return declared | sampled


async def scrape(base_url: str) -> tuple[int, Page]:
    """(status, page) of GET ``base_url``/metrics."""
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"{base_url}/metrics") as response,
    ):
        return response.status, Page(await response.text())


async def scrape_until(base_url: str, done: Callable[[Page], bool], limit_s: float = 30.0) -> Page:
    """Scrapes until ``done`` holds of a page (the process may still be starting)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            status, page = await scrape(base_url)
            if status == 200 and done(page):
                return page
        except aiohttp.ClientError:
            page = None
        if time.monotonic() > deadline:
            raise AssertionError(f"{base_url}/metrics never got there:\n{page and page.text}")
        await asyncio.sleep(0.1)

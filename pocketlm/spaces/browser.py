"""Drive the suite in headless Chromium like a user: open each tab, submit its example, wait for the answer,
screenshot it — shared by the browser test and `python -m pocketlm.spaces.screenshots` (the docs' images).

Playwright runs the system Chromium (`/usr/bin/chromium`, or `POCKETLM_CHROMIUM`), so nothing is downloaded.
Every request the page makes is recorded: the suite must work with no outbound network at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from pocketlm.spaces import SPACE_TITLES

CHROMIUM = os.environ.get("POCKETLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ANSWER_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1280, "height": 900}


@dataclass
class TabVisit:
    tab: str
    answer: str
    """The text the page showed as the answer (continuation, span, table, reply)."""
    seconds: float
    """From the click to the answer on screen."""
    screenshot: Path


@dataclass
class SuiteVisit:
    tabs: dict[str, TabVisit] = field(default_factory=dict)
    error_message: str = ""
    """What the page showed for an empty question (a readable message, never a traceback)."""
    outside_requests: list[str] = field(default_factory=list)
    """Requests the page made to anything but the suite's own host."""


def visit_suite(base_url: str, screenshot_dir: Path, tabs: list[str], chat_messages: list[str] = ()) -> SuiteVisit:
    """Open `base_url`, run each of `tabs` (Space names) on its example, and save `<tab>.png` in `screenshot_dir`."""
    from playwright.sync_api import sync_playwright

    screenshot_dir.mkdir(parents=True, exist_ok=True)
    visit = SuiteVisit()
    own_host = urlparse(base_url).netloc
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("request", lambda r: None if urlparse(r.url).netloc in (own_host, "") else visit.outside_requests.append(r.url))
            # Not "networkidle": the page keeps an event stream open (Gradio's session heartbeat).
            page.goto(base_url, wait_until="load")
            page.get_by_role("tab").first.wait_for(timeout=ANSWER_TIMEOUT_MS)
            drivers: dict[str, Callable] = {
                "text_generation": _text_generation, "question_answering": _question_answering,
                "onnx_benchmark": _onnx_benchmark, "rag_chat": lambda page: _rag_chat(page, chat_messages),
            }
            for tab in tabs:
                page.get_by_role("tab", name=SPACE_TITLES[tab]).click()
                started = time.perf_counter()
                answer = drivers[tab](page)
                seconds = time.perf_counter() - started
                path = screenshot_dir / f"{tab}.png"
                page.screenshot(path=str(path), full_page=True)
                visit.tabs[tab] = TabVisit(tab, answer, seconds, path)
            if "question_answering" in tabs:
                visit.error_message = _empty_question_message(page, screenshot_dir / "error_message.png")
        finally:
            browser.close()
    return visit


def _value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def _wait_for_value(page, elem_id: str) -> str:
    page.wait_for_function(
        """id => { const el = document.querySelector(`#${id} textarea, #${id} input`); return el && el.value.length > 0; }""",
        arg=elem_id, timeout=ANSWER_TIMEOUT_MS,
    )
    return _value(page, elem_id)


def _text_generation(page) -> str:
    page.locator("#generation-submit").click()
    page.locator("#generation-stats").get_by_text("tokens/s").wait_for(timeout=ANSWER_TIMEOUT_MS)
    return _value(page, "generation-output")


def _question_answering(page) -> str:
    page.locator("#qa-submit").click()
    answer = _wait_for_value(page, "qa-answer")
    page.locator("#qa-highlighted").get_by_text(answer, exact=True).first.wait_for(timeout=ANSWER_TIMEOUT_MS)
    return answer


def _onnx_benchmark(page) -> str:
    page.locator("#bench-submit").click()
    table = page.locator("#bench-table")
    table.get_by_text("ONNX Runtime int8").wait_for(timeout=ANSWER_TIMEOUT_MS)
    page.locator("#bench-plot img").wait_for(timeout=ANSWER_TIMEOUT_MS)
    return table.inner_text()


def _rag_chat(page, messages: list[str]) -> str:
    replies = []
    for index, message in enumerate(messages, start=1):
        page.locator("#rag-message textarea").fill(message)
        page.locator("#rag-message textarea").press("Enter")
        bot = page.locator('#rag-chatbot [data-testid="bot"]')
        page.wait_for_function(
            """n => document.querySelectorAll('#rag-chatbot [data-testid="bot"]').length >= n""", arg=index,
            timeout=ANSWER_TIMEOUT_MS,
        )
        replies.append(bot.nth(index - 1).inner_text())
    return "\n---\n".join(replies)


def _empty_question_message(page, screenshot: Path) -> str:
    """Clear the QA question, submit, and return the message the page shows."""
    page.get_by_role("tab", name=SPACE_TITLES["question_answering"]).click()
    page.locator("#qa-question textarea, #qa-question input").first.fill("")
    page.locator("#qa-submit").click()
    toast = page.locator(".toast-body.error").first
    toast.wait_for(timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_timeout(500)  # the toast slides in
    page.screenshot(path=str(screenshot))
    return toast.inner_text()

"""The candle path's own thread and event loop: a closed candle never waits behind HTTP.

On one shared event loop a confirm frame's ``recv()`` resumes only after every HTTP request
that is ready in the same pass has had its turn: under 64 keep-alive connections on
``GET /signal`` the frame waited ~12 ms for the loop, and ``/paper/trades`` over a large
journal held it for tens of ms. The service's own histogram could not see that wait.

Design: the feed (websocket + REST backfill), its queue and the pipeline (features, window,
student, the signal store's writes) run here, in one thread with its own event loop
(uvloop when installed, as uvicorn's); the API, the paper trader and the journal stay on
uvicorn's loop. Why this and not the API in its own process reading the store: every
object the API reads (signal store, pipeline state, model slot, feed status, paper account,
the Prometheus registry) stays where ``service/http/routes.py`` reads it, with no IPC, no shared
memory layout and no multiprocess metrics; on a 2-core host one more thread is cheaper than
one more interpreter. What a thread does not isolate is the GIL, so:

* the service lowers the interpreter's switch interval to :data:`SWITCH_INTERVAL_S` while
  the candle thread runs: a thread that waits for the GIL (a frame arrived) gets it at the
  HTTP thread's next bytecode boundary within ~0.5 ms instead of 5 ms. The HTTP thread
  pays nothing for it while the candle thread sleeps (a forced switch happens only when
  another thread is waiting);
* heavy reads do not hold the GIL in one long C call: ``/paper/trades`` is read by SQLite
  (which releases the GIL while it steps) on the journal's reader thread and serialised
  there in bounded chunks (``service.paper.journal``).

Thread rules. Only this thread mutates the feed, the pipeline and the signal store. The
API thread reads them in single steps that are atomic under the GIL (attribute reads,
dict lookups, ``list(deque)``), never iterating a container the candle thread may grow.
Live signals cross to the paper trader once per burst (:class:`Handoff`: collected on the
candle loop for :data:`HANDOFF_DELAY_S`, then one ``call_soon_threadsafe`` into the
trader's bounded queue), so the API thread is not woken, and does not ask for the GIL,
between the candles of one burst. The lifespan starts the thread (:meth:`CandleLoop.start`),
spawns the tasks on it (:meth:`CandleLoop.spawn`) and :meth:`CandleLoop.stop` cancels and
awaits them on their own loop, in order, then stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 0.0005  # CPython's default is 0.005
HANDOFF_DELAY_S = 0.005  # candles of several symbols close together: one hand-off per burst


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (uvicorn[standard] brings it), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class CandleLoop:
    """One thread running one event loop for the candle path; see the module docstring."""

    def __init__(
        self,
        name: str = "candles",
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = new_event_loop,
    ) -> None:
        self.name = name
        self._loop_factory = loop_factory
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # touched on self.loop only
        self._switch_was: float | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread and its loop; returns once the loop runs."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} loop already started")
        loop = self._loop_factory()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=main, name=self.name, daemon=True)
        thread.start()
        ready.wait()
        self.loop, self._thread = loop, thread
        self._switch_was = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)

    async def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the candle loop and await its result from the caller's loop."""
        if self.loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} loop not started")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def spawn(
        self,
        name: str,
        coro: Coroutine[Any, Any, None],
        on_done: Callable[[asyncio.Task[None]], None] | None = None,
    ) -> asyncio.Task[None]:
        """Start ``coro`` as a task on the candle loop; returns that task (read ``done()``,
        ``cancelled()`` and ``exception()`` from any thread once it is done)."""

        async def create() -> asyncio.Task[None]:
            task = asyncio.get_running_loop().create_task(coro, name=name)
            if on_done is not None:
                task.add_done_callback(on_done)
            self._tasks[name] = task
            return task

        task: asyncio.Task[None] = await self.call(create())
        return task

    async def stop(self, order: tuple[str, ...] = (), timeout_s: float = 5.0) -> None:
        """Cancel the tasks (``order`` first, then the rest) and await each on the candle
        loop with ``timeout_s``; then stop the loop and join the thread. Idempotent."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            budget = timeout_s * (len(self._tasks) + 1)  # a loop that never answers: give up
            try:
                async with asyncio.timeout(budget):
                    await self.call(self._cancel_all(order, timeout_s))
            except TimeoutError:
                log.warning("%s loop did not answer within %.1fs", self.name, budget)
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, timeout_s)
            if thread.is_alive():
                log.warning("%s thread did not stop within %.1fs", self.name, timeout_s)
        self.loop, self._thread = None, None
        if self._switch_was is not None:
            sys.setswitchinterval(self._switch_was)
            self._switch_was = None

    async def _cancel_all(self, order: tuple[str, ...], timeout_s: float) -> None:
        names = [n for n in order if n in self._tasks]
        names += [n for n in self._tasks if n not in names]
        for name in names:
            task = self._tasks.pop(name)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                log.warning("%s task did not stop within %.1fs", name, timeout_s)


class Handoff(Generic[T]):
    """Items made on the candle loop, delivered to ``fn`` on ``target`` once per burst.

    ``__call__`` (the pipeline's sink, on the candle thread) collects; the first item of a
    burst arms one timer of ``delay_s`` on the candle loop, which passes the whole batch to
    ``target`` in one ``call_soon_threadsafe``. ``fn`` must not block (the paper trader's
    ``offer``: a bounded queue that drops and counts when full). Called with no running
    loop (a test driving the pipeline by hand), an item is passed on at once.
    """

    def __init__(
        self,
        target: asyncio.AbstractEventLoop,
        fn: Callable[[T], None],
        delay_s: float = HANDOFF_DELAY_S,
    ) -> None:
        self.target = target
        self.fn = fn
        self.delay_s = delay_s
        self._batch: list[T] = []
        self._armed = False
        self._made = 0  # written by the candle thread only
        self._delivered = 0  # written by the target loop's thread only

    @property
    def pending(self) -> int:
        """Items collected or on their way, not yet passed to ``fn``."""
        return self._made - self._delivered

    def __call__(self, item: T) -> None:
        self._batch.append(item)
        self._made += 1
        if self._armed:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._armed = True
        here.call_later(self.delay_s, self.flush)

    def flush(self) -> None:
        """Hand the collected items over now."""
        batch, self._batch, self._armed = self._batch, [], False
        if not batch:
            return
        if self.target.is_closed():
            self._delivered += len(batch)  # nobody left to take them (shutdown)
            return
        self.target.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, batch: list[T]) -> None:
        for item in batch:
            self.fn(item)
        self._delivered += len(batch)

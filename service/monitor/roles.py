"""Champion and challenger: which model serves, which one is scored in shadow, and the
promotions, refusals and rollbacks between them (DESIGN section 12).

:class:`ModelRoles` is the thin shell over the pure pieces: the registry's transitions
(:mod:`service.model.registry`), the paired comparison and the rule
(:mod:`service.monitor.promotion`) and the shadow scorer (:mod:`service.monitor.shadow`).
Every change is recorded in ``state_dir/models.json`` before it is answered, journaled in
the signal journal's ``model_decisions`` table and counted in
``apprentice_promotions_total{outcome}``. At start the champion is the recorded one, unless
``APPRENTICE_MODEL`` changed since it was recorded (then the configured model serves: an
operator's new setting wins over an old record). A promotion swaps the serving predictor in
one assignment (:class:`service.model.predictor.ModelSlot`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from service.metrics import Metrics
from service.model.card import ModelCardError
from service.model.predictor import Predictor
from service.model.registry import (
    Registry,
    Roles,
    Version,
    promoted,
    refused,
    rolled_back,
    with_challenger,
    with_champion,
)
from service.monitor.model_monitor import ModelMonitor
from service.monitor.promotion import RULE_HEAD, Decision, decide
from service.monitor.role_journal import read_decisions, write_decision
from service.monitor.shadow import ShadowScorer

log = logging.getLogger(__name__)


class RoleConflict(Exception):
    """A request the current roles cannot honour (no challenger, nothing to roll back to,
    a refused promotion); the message says why (the route's 409)."""


def version_of(predictor: Predictor) -> Version:
    """The registry entry of a loaded predictor."""
    card = predictor.card
    return Version(card.name, card.version, card.sha256, str(Path(predictor.path).resolve()))


class ModelRoles:
    """The champion/challenger state of one service; async methods run on the API's loop."""

    def __init__(
        self,
        *,
        registry: Registry,
        shadow: ShadowScorer,
        metrics: Metrics,
        install: Callable[[Predictor], None],
        min_scored: int,
        margin: float,
        auto_promote: bool = False,
    ) -> None:
        self.registry = registry
        self.shadow = shadow
        self.metrics = metrics
        self.install = install  # serves a predictor (the runtime's slot swap + model_info)
        self.min_scored = min_scored
        self.margin = margin
        self.auto_promote = auto_promote
        self.roles = Roles()
        self._lock = asyncio.Lock()
        self._next_auto = min_scored
        self._auto: asyncio.Task[Any] | None = None
        shadow.on_scored = self._maybe_auto

    @classmethod
    def build(
        cls,
        monitor: ModelMonitor,
        install: Callable[[Predictor], None],
        *,
        model_dir: Path,
        state_dir: Path,
        min_scored: int,
        margin: float,
        auto_promote: bool,
    ) -> ModelRoles:
        """The roles of a service whose monitor is ``monitor`` (the shadow scorer shares its
        journal, its thread and its score window)."""
        shadow = ShadowScorer(
            symbols=monitor.symbols,
            interval=monitor.interval,
            metrics=monitor.metrics,
            journal=monitor.journal,
            call=monitor.call,
            score_window=monitor.scorer.window,
        )
        return cls(
            registry=Registry(model_dir, state_dir),
            shadow=shadow,
            metrics=monitor.metrics,
            install=install,
            min_scored=min_scored,
            margin=margin,
            auto_promote=auto_promote,
        )

    # ------------------------------------------------------------------ start
    def load_champion(self, configured: Path) -> Predictor:
        """The champion to serve at start (blocking: call it off the loop); see the module
        docstring. A recorded champion that no longer loads falls back to the configured one."""
        try:
            conf = self.registry.describe(configured)
        except (ModelCardError, OSError):
            return Predictor.load(configured)  # the configured model's own error, named
        try:
            roles = self.registry.load_roles()
        except ModelCardError as exc:
            log.error("%s: starting from APPRENTICE_MODEL", exc)
            roles = Roles()
        if roles.configured != conf:
            roles = replace(with_champion(roles, conf), configured=conf)
        champion = roles.champion or conf
        try:
            predictor = Predictor.load(champion.path)
        except ModelCardError as exc:
            if champion == conf:
                raise
            log.error(
                "recorded champion %s does not load (%s): serving %s",
                champion.label,
                exc,
                conf.label,
            )
            roles = with_champion(roles, conf)
            predictor = Predictor.load(conf.path)
        self._save(roles)
        return predictor

    async def start(self) -> None:
        """Load the recorded challenger and rebuild both live scores from the journal."""
        challenger = None
        ch = self.roles.challenger
        if ch is not None:
            try:
                challenger = await asyncio.to_thread(Predictor.load, ch.path)
            except ModelCardError as exc:
                log.error("recorded challenger %s does not load (%s): dropped", ch.label, exc)
                await asyncio.to_thread(self._save, with_challenger(self.roles, None))
        n = await self.shadow.start(challenger)
        self.shadow.set_challenger(challenger, fresh=False)  # its gauge; the scores stay
        self.metrics.promotion_refusals_in_row.set(self.roles.refusals_in_row)
        if challenger is not None:
            log.info("challenger %s in shadow: %d rows replayed", ch and ch.label, n)

    def record_champion(self, predictor: Predictor) -> None:
        """A reload (``/admin/reload``) serves ``predictor``: record it (blocking)."""
        self._save(with_champion(self.roles, version_of(predictor)))

    # ------------------------------------------------------------------ changes
    async def load_challenger(self, path: Path) -> Version:
        """Register the model at ``path`` and score it in shadow from the next candle."""
        async with self._lock:
            version = await asyncio.to_thread(self.registry.register, path)
            predictor = await asyncio.to_thread(Predictor.load, version.path)
            self._announce(predictor)
            await self._commit(with_challenger(self.roles, version), "challenger", "loaded", "")
            return version

    async def drop_challenger(self) -> Version | None:
        """Stop the shadow scoring; returns the challenger it dropped (None: there was none)."""
        async with self._lock:
            was = self.roles.challenger
            if was is not None:
                self._announce(None)
                await self._commit(with_challenger(self.roles, None), "challenger", "dropped", "")
            return was

    async def promote(self, force: bool = False, *, auto: bool = False) -> Decision:
        """Apply the rule; promote or refuse (the refusal is journaled, counted and returned)."""
        async with self._lock:
            predictor = self.shadow.challenger
            if predictor is None or self.roles.challenger is None:
                raise RoleConflict("no challenger is loaded: POST /admin/challenger first")
            d = decide(
                self.shadow.scored,
                self.shadow.paired(None, RULE_HEAD),
                min_scored=self.min_scored,
                margin=self.margin,
                force=force,
            )
            action = "auto_promote" if auto else "promote"
            if not d.promote:
                self.metrics.promotions.labels(outcome="refused").inc()
                await self._commit(refused(self.roles), action, "refused", d.reason)
                return d
            self.install(predictor)
            self._announce(None)
            self.metrics.promotions.labels(outcome="promoted").inc()
            await self._commit(promoted(self.roles), action, "promoted", d.reason)
            log.info("promoted %s: %s", predictor.card.version, d.reason)
            return d

    async def rollback(self) -> Version:
        """Serve the previous champion again; returns it."""
        async with self._lock:
            prev = self.roles.previous
            if prev is None:
                raise RoleConflict("no previous champion to roll back to")
            predictor = await asyncio.to_thread(Predictor.load, prev.path)
            roles = rolled_back(self.roles)
            self.install(predictor)
            if roles.challenger is None and self.roles.challenger is not None:
                self._announce(None)
            self.metrics.promotions.labels(outcome="rolled_back").inc()
            await self._commit(roles, "rollback", "rolled_back", f"{prev.label} serves again")
            return prev

    def _maybe_auto(self) -> None:
        """After a drain that scored paired candles: with APPRENTICE_AUTO_PROMOTE, apply the
        rule once ``min_scored`` candles are in, then every ``min_scored`` more."""
        if not self.auto_promote or self.shadow.challenger is None:
            return
        if self.shadow.scored < self._next_auto or (self._auto and not self._auto.done()):
            return
        self._next_auto = self.shadow.scored + self.min_scored
        self._auto = asyncio.ensure_future(self._auto_promote())

    async def _auto_promote(self) -> None:
        try:
            await self.promote(auto=True)
        except RoleConflict:
            pass
        except Exception:
            log.exception("auto-promotion failed")

    # ------------------------------------------------------------------ bookkeeping
    def _announce(self, challenger: Predictor | None) -> None:
        self.shadow.set_challenger(challenger)
        self._next_auto = self.min_scored

    def _save(self, roles: Roles) -> None:
        self.registry.save_roles(roles)
        self.roles = roles
        self.metrics.promotion_refusals_in_row.set(roles.refusals_in_row)

    async def _commit(self, roles: Roles, action: str, outcome: str, reason: str) -> None:
        before = self.roles
        await asyncio.to_thread(self._save, roles)
        champ = roles.champion.label if roles.champion else None
        chall = roles.challenger or before.challenger
        try:
            db = self.shadow.journal.db
            await self.shadow.call(
                write_decision, db, action, outcome, champ, chall.label if chall else None, reason
            )
        except Exception:  # the decision stands; the journal line is bookkeeping
            log.exception("could not journal the %s decision", action)
        log.info("model roles: %s %s (%s)", action, outcome, reason or "-")

    # ------------------------------------------------------------------ reports
    async def decisions(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest journaled decisions."""
        rows: list[dict[str, Any]] = await self.shadow.call(
            read_decisions, self.shadow.journal.db, limit
        )
        return rows

    def report(self) -> dict[str, Any]:
        """Champion and challenger side by side (``/model/health``'s ``challenger`` block)."""
        r = self.roles
        now = None
        if self.shadow.challenger is not None:
            d = decide(
                self.shadow.scored,
                self.shadow.paired(None, RULE_HEAD),
                min_scored=self.min_scored,
                margin=self.margin,
            )
            now = {"promote": d.promote, "reason": d.reason}
        return {
            "champion": None if r.champion is None else asdict(r.champion),
            "challenger": None if r.challenger is None else asdict(r.challenger),
            "previous": None if r.previous is None else asdict(r.previous),
            "rule": {
                "head": RULE_HEAD,
                "min_scored": self.min_scored,
                "margin": self.margin,
                "auto_promote": self.auto_promote,
            },
            "scored": self.shadow.scored,
            "promote_now": now,
            "refusals_in_row": r.refusals_in_row,
            **self.shadow.report(),
        }

    def update_gauges(self) -> None:
        """Scrape-time gauges of the challenger."""
        self.shadow.update_gauges()

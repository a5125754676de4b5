"""The closed loop on a simulated clock: sessions, homepage lists, reactions, delayed purchases.

One scheduler thread owns a heap of timed actions (session steps, click / cart / purchase
events) plus three clocks of its own: shopper arrivals (a Poisson process whose rate follows
the hour of day), catalog dynamics (new items, retirements, price changes) and new users.
Every event is emitted by that thread in sim-time order with its scheduled SIM time as event
time, so a user's events are in order and delayed purchases land hours or days later.

A session (1 + geometric steps, exponential think time) mixes browsing views (by the hidden
taste) and homepage visits. A homepage visit calls the recommender (``Recommender``; the
gRPC scorer in production) on a worker thread, so a slow scorer delays that shopper, not the
arrivals; the reactions (drawn from the hidden truth with position bias) and the session's
next step go back on the heap. Each session draws from its own seeded generator, so with a
``VirtualClock`` and a deterministic recommender the event sequence is reproducible.

The ``oracle`` arm: a deterministic share of human users (``run.oracle_share``, by a hash of
the user id that is independent of the scorer's A/B hash) is served by the simulator itself,
which ranks the WHOLE active catalog by the hidden truth at that sim time (items the user
bought excluded, as the scorer does). It ranks the whole catalog rather than re-ranking the
scorer's candidates because it is the upper bound of the whole system (retrieval included).
Oracle visits do not call Recommend, so the scorer never logs an impression it did not show;
their events carry no request_id (the label join ignores them) but feed the dataflow as any
shopper's do. Bots are never oracle users; their lists are excluded from the arm statistics.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from features.events import make_event
from proto import events_pb2
from sim.clock import Clock
from sim.config import WorldConfig
from sim.gap import Explained, price_request
from sim.stats import CLICKS, PENDING, SHOWN, SIM_TIME, Stats
from sim.world import HOUR_MS, Item, User, World

log = logging.getLogger(__name__)
DEVICES = ("web", "ios", "android")
COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "JP")
TYPE: dict[int, str] = {events_pb2.VIEW: "view", events_pb2.CLICK: "click",
                         events_pb2.ADD_TO_CART: "add_to_cart", events_pb2.PURCHASE: "purchase"}


@dataclass
class Served:
    request_id: str
    items: list[str]
    arm: str
    degraded: bool = False
    latency_ms: float = 0.0
    sources: list[str] | None = None  # per item: the retrieval source that proposed it (diagnostic)
    candidates: list[Explained] | None = None  # an explained call's retrieved candidates (sim.gap)


class RecommendError(Exception):
    """A Recommend call failed; ``code`` names the gRPC status (or the failure)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Recommender(Protocol):
    def __call__(self, user: User, k: int, sim_ms: int) -> Served: ...


class Sink(Protocol):
    def event(self, user_id: str, value: bytes) -> None: ...
    def catalog(self, item_id: str, value: bytes) -> None: ...
    def profile(self, user_id: str, value: bytes) -> None: ...


@dataclass
class Session:
    sid: int
    user: User
    rng: np.random.Generator
    steps_left: int
    first: bool = True
    landing: bool = False  # the current step is the session's first (no session history yet)


def in_oracle(user_id: str, seed: int, share: float) -> bool:
    digest = hashlib.blake2b(f"sim-oracle:{seed}:{user_id}".encode(), digest_size=8).digest()
    h = int.from_bytes(digest, "big")
    return (h % 10_000) < share * 10_000


def context(user: User) -> tuple[str, str]:
    h = zlib.crc32(user.user_id.encode())
    return DEVICES[h % len(DEVICES)], COUNTRIES[(h // 7) % len(COUNTRIES)]


def item_upsert(item: Item, t_ms: int) -> bytes:
    return events_pb2.ItemUpsert(item_id=item.item_id, title=f"item {item.item_id}",
                                 category=f"c{item.category}", brand=f"b{item.brand}",
                                 price=item.price, rating=3.0 + item.quality / 2,
                                 active=item.active, updated_ms=t_ms).SerializeToString()


def user_profile(user: User, t_ms: int) -> bytes:
    return events_pb2.UserProfile(user_id=user.user_id, country=context(user)[1], age_bucket="25-34",
                                  signup_ms=t_ms, updated_ms=t_ms).SerializeToString()


class Shop:
    def __init__(self, world: World, cfg: WorldConfig, sink: Sink, recommender: Recommender,
                 clock: Clock, rate: float, run_id: str = "r0") -> None:
        self.w, self.cfg, self.sink, self.recommend, self.clock = world, cfg, sink, recommender, clock
        self.rate, self.run_id = rate, run_id
        self.k = cfg.run.k
        self.pool: ThreadPoolExecutor | None = None
        self.stats = Stats()
        self.lock = threading.Lock()  # heap, stats, purchased sets
        self.heap: list[tuple[int, int, str, Any]] = []
        self.seq = self.n_sessions = self.n_events = 0
        self.purchased: dict[str, set[str]] = {}
        self.pending_purchases = 0
        seed = cfg.catalog.seed
        self.arrivals = np.random.default_rng([seed, 10])
        self.dyn = np.random.default_rng([seed, 11])
        world.epoch_ms = clock.start_ms
        t0 = clock.start_ms
        self.next_arrival = t0 + self._arrival_gap(t0)
        d = cfg.dynamics
        self.next_dyn = {kind: t0 + self._exp_ms(per_h) for kind, per_h in (
            ("new_item", d.new_items_per_h), ("retire", d.retire_items_per_h),
            ("price", d.price_changes_per_h), ("new_user", d.new_users_per_h))}

    # --- timing -------------------------------------------------------------------------------
    def _exp_ms(self, per_h: float) -> float:
        return float(self.dyn.exponential(HOUR_MS / per_h)) if per_h > 0 else math.inf

    def diurnal(self, t_ms: int | float) -> float:
        b = self.cfg.behaviour
        hour = (t_ms / HOUR_MS) % 24.0
        return 1.0 + b.diurnal_amplitude * math.cos(2 * math.pi * (hour - b.diurnal_peak_hour) / 24.0)

    def _arrival_gap(self, t_ms: float) -> float:
        """Thinning: next arrival of a Poisson process of ``rate / speed * diurnal`` per sim s."""
        top = 1.0 + self.cfg.behaviour.diurnal_amplitude  # the diurnal factor's maximum
        peak = self.rate / self.clock.speed * top / 1000.0
        if peak <= 0:
            return math.inf
        t = t_ms
        while True:
            t += float(self.arrivals.exponential(1.0 / peak))
            if self.arrivals.random() * top <= self.diurnal(t):
                return t - t_ms

    def push(self, t_ms: float, kind: str, payload: Any) -> None:
        with self.lock:
            heapq.heappush(self.heap, (int(t_ms), self.seq, kind, payload))
            self.seq += 1

    # --- the loop -----------------------------------------------------------------------------
    def run(self, end_ms: float, stop: threading.Event, pool: ThreadPoolExecutor | None = None) -> None:
        """Run until sim time ``end_ms`` (or ``stop``). With a pool, homepage calls run on it."""
        self.pool = pool
        while not stop.is_set():
            with self.lock:
                top = self.heap[0][0] if self.heap else math.inf
            dyn_kind = min(self.next_dyn, key=lambda k: self.next_dyn[k])
            due = min(top, self.next_arrival, self.next_dyn[dyn_kind], end_ms)
            if not self.clock.wait_until(int(due), stop):
                continue
            SIM_TIME.set(self.clock.now_ms() / 1000.0)
            if due >= end_ms:
                break
            if due == top:
                with self.lock:
                    t, _, kind, payload = heapq.heappop(self.heap)
                self._dispatch(t, kind, payload)
            elif due == self.next_arrival:
                self.next_arrival = due + self._arrival_gap(due)
                self.start_session(self.w.pick_user(self.arrivals), int(due))
            else:
                self.next_dyn[dyn_kind] = due + self._exp_ms(self._per_h(dyn_kind))
                self._dynamics(dyn_kind, int(due))

    def _per_h(self, kind: str) -> float:
        d = self.cfg.dynamics
        return {"new_item": d.new_items_per_h, "retire": d.retire_items_per_h,
                "price": d.price_changes_per_h, "new_user": d.new_users_per_h}[kind]

    def _dispatch(self, t: int, kind: str, payload: Any) -> None:
        if kind == "step":
            self.step(payload, t)
        else:
            self._emit_due(t, payload)

    # --- catalog and users --------------------------------------------------------------------
    def upsert(self, item: Item, t_ms: int) -> None:
        self.sink.catalog(item.item_id, item_upsert(item, t_ms))
        self.stats.catalog_upserts += 1

    def profile(self, user: User, t_ms: int) -> None:
        self.sink.profile(user.user_id, user_profile(user, t_ms))
        self.stats.profiles += 1

    def _dynamics(self, kind: str, t: int) -> None:
        st = self.stats
        if kind == "new_item":
            self.upsert(self.w.add_item(t), t)
            st.new_items += 1
        elif kind == "new_user":
            user = self.w.add_user()
            self.profile(user, t)
            st.new_users += 1
            self.start_session(user, t)
        else:
            item = self.w.random_item(self.dyn)
            if item is None:
                return
            if kind == "retire":
                self.w.retire(item)
                st.retired_items += 1
            else:
                self.w.change_price(item, float(self.dyn.normal(0, self.cfg.dynamics.price_change_sd)))
                st.price_changes += 1
            self.upsert(item, t)

    # --- sessions -----------------------------------------------------------------------------
    def start_session(self, user: User, t: int) -> None:
        self.n_sessions += 1
        self.stats.sessions += 1
        rng = np.random.default_rng([self.cfg.catalog.seed, 3, self.n_sessions])
        b = self.cfg.behaviour
        steps = b.bot_steps if user.bot else int(rng.geometric(1.0 / b.steps_mean))
        self.step(Session(self.n_sessions, user, rng, steps), t)

    def step(self, s: Session, t: int) -> None:
        b = self.cfg.behaviour
        s.steps_left -= 1
        home_p = (b.bot_home_share if s.user.bot else b.landing_home if s.first else b.home_share)
        s.landing, s.first = s.first, False
        if s.rng.random() < home_p:
            if self.pool is not None:
                self.pool.submit(self._safe_homepage, s, t)
            else:
                self.homepage(s, t)
            return
        if s.user.bot:
            item = self.w.random_item(s.rng)
        else:
            item = next(iter(self.w.browse(s.user, 1, s.rng, t)), None)
        if item is not None:
            self.emit(s.user, events_pb2.VIEW, item, t)
            if not s.user.bot:
                p = self.cfg.truth.organic_cart_rate * self.w.p_cart(s.user, item) / self.cfg.truth.cart_rate
                self._cart_and_buy(s, item, t, p, "", 0, None)
        self._next_step(s, t)

    def _next_step(self, s: Session, t: float) -> None:
        if s.steps_left > 0:
            think = self.cfg.behaviour.bot_think_s if s.user.bot else self.cfg.behaviour.think_s
            self.push(t + s.rng.exponential(think * 1000.0), "step", s)

    def _cart_and_buy(self, s: Session, item: Item, t_click: float, p_cart: float, rid: str,
                      pos: int, arm: str | None) -> bool:
        """With probability ``p_cart`` schedule an add-to-cart and maybe a delayed purchase."""
        if s.rng.random() >= p_cart:
            return False
        ta = t_click + s.rng.exponential(self.cfg.behaviour.cart_delay_s * 1000.0)
        self.push(ta, "event", (s.user, events_pb2.ADD_TO_CART, item, rid, pos, None))
        if s.rng.random() < self.cfg.truth.purchase_rate:
            tp = ta + self.w.purchase_delay_ms(s.rng)
            with self.lock:
                self.pending_purchases += 1
                if arm is not None:
                    self.stats.arm(arm).purchases_pending += 1
            self.push(tp, "event", (s.user, events_pb2.PURCHASE, item, rid, pos, (arm, ta)))
        return True

    def _safe_homepage(self, s: Session, t: int) -> None:
        try:
            self.homepage(s, t)
        except Exception:  # one broken visit must not stop the shop
            log.exception("homepage visit failed")

    def _row_of(self, item_id: str) -> int | None:
        item = self.w.index.get(item_id)
        return None if item is None else item.idx

    def homepage(self, s: Session, t: int) -> None:
        t = max(t, self.clock.now_ms())  # on a worker thread, the visit happens when it runs
        user, st = s.user, self.stats
        oracle = not user.bot and in_oracle(user.user_id, self.cfg.catalog.seed, self.cfg.run.oracle_share)
        with self.lock:
            bought = frozenset(self.purchased.get(user.user_id, ()))
        if oracle:
            items, _ = self.w.oracle(user, self.k, t, bought)
            served = Served("", [it.item_id for it in items], "oracle")
        else:
            try:
                served = self.recommend(user, self.k, t)
            except RecommendError as exc:
                with self.lock:
                    st.rpc_error(exc.code)
                self._next_step(s, t)
                return
        t_last = float(t)
        shown = [(pos, self.w.index.get(i)) for pos, i in enumerate(served.items)]
        counted = not user.bot and self.clock.wall_elapsed_s() >= self.cfg.run.warmup_s
        clicks = carts = retired = 0
        expected = 0.0
        events: list[tuple[float, Any]] = []
        outcomes: list[tuple[int, bool]] = []
        ages: list[int] = []  # per entry of outcomes: the item's age (sim ms) at this impression
        for pos, item in shown:
            if item is None:
                continue
            p = self.w.p_click(user, item, pos, t)
            retired += int(not item.active)
            expected += p
            ages.append(t - item.born_ms)
            if user.bot:
                p = self.cfg.behaviour.bot_click_rate
            if s.rng.random() >= p:
                outcomes.append((pos, False))
                continue
            outcomes.append((pos, True))
            clicks += 1
            tc = t + s.rng.exponential(self.cfg.behaviour.click_delay_s * 1000.0)
            t_last = max(t_last, tc)
            events.append((tc, (user, events_pb2.CLICK, item, served.request_id, pos, None)))
            if not user.bot:
                carts += self._cart_and_buy(s, item, tc, self.w.p_cart(user, item), served.request_id,
                                            pos, served.arm if counted else None)
        n = sum(1 for _, it in shown if it is not None)
        best = capped = 0.0
        gap = None
        if counted and n:
            _, ps = self.w.oracle(user, n, t, bought)
            best = sum(float(q) * self.w.examine(pos) for pos, q in enumerate(ps))
            if served.candidates:
                gap = price_request(self.w.p_click_all(user, t), self._row_of, served.candidates,
                                    served.items, n, self.w.examine)
            if self.cfg.run.diagnostic_category_cap > 0:
                _, ps = self.w.oracle(user, n, t, bought, self.cfg.run.diagnostic_category_cap)
                capped = sum(float(q) * self.w.examine(pos) for pos, q in enumerate(ps))
        with self.lock:
            for tc, ev in events:
                heapq.heappush(self.heap, (int(tc), self.seq, "event", ev))
                self.seq += 1
            st.unknown_items += len(shown) - n
            if not oracle:
                st.rpc(served.latency_ms)
                st.degraded += int(served.degraded)
            if user.bot:
                st.bot_requests += 1
                st.bot_clicks += clicks
            elif not oracle:
                st.served_impressions += n
                st.served_clicks += clicks
                SHOWN.labels(served.arm).inc(n)
                CLICKS.labels(served.arm).inc(clicks)
            if not user.bot:  # the learning curve counts warm-up lists too (flagged)
                st.hour(served.arm, (t - self.clock.start_ms) // HOUR_MS, user.user_id, n, clicks,
                        expected, warmup=not counted)
            if counted:
                a = st.arm(served.arm)
                a.requests += 1
                a.impressions += n
                a.clicks += clicks
                a.carts += carts
                a.expected_clicks += expected
                a.best_clicks += best
                a.best_capped_clicks += capped
                if gap is not None:
                    a.gap.add(gap, best, n)
                ctx = a.by_context.setdefault("landing" if s.landing else "in_session", [0, 0])
                ctx[0] += n
                ctx[1] += clicks
                for pos, hit in outcomes:
                    src = served.sources[pos] if served.sources else served.arm
                    by_src = a.by_source.setdefault(src, [0, 0])
                    by_src[0] += 1
                    by_src[1] += hit
                a.degraded += int(served.degraded)
                a.retired_shown += retired
                a.add_new_items(ages, outcomes)
                cell = a.per_user.setdefault(user.user_id, [0, 0])
                cell[0] += n
                cell[1] += clicks
        self._next_step(s, t_last)

    # --- events -------------------------------------------------------------------------------
    def _emit_due(self, t: int, payload: tuple[User, int, Item, str, int, Any]) -> None:
        user, etype, item, rid, pos, purchase = payload
        self.emit(user, etype, item, t, rid, pos)
        if etype == events_pb2.PURCHASE:
            arm, t_cart = purchase
            with self.lock:
                self.purchased.setdefault(user.user_id, set()).add(item.item_id)
                self.pending_purchases -= 1
                self.stats.purchase_delays_h.append((t - t_cart) / HOUR_MS)
                if arm is not None:
                    a = self.stats.arm(arm)
                    a.purchases_pending -= 1
                    a.purchases += 1
                    a.revenue += item.price
            PENDING.set(self.pending_purchases)

    def emit(self, user: User, etype: int, item: Item, t: float, rid: str = "", pos: int = 0) -> None:
        device, country = context(user)
        self.n_events += 1
        qty = 1 if etype in (events_pb2.ADD_TO_CART, events_pb2.PURCHASE) else 0
        value = make_event(event_id=f"sim{self.cfg.catalog.seed}.{self.run_id}.{self.n_events}",
                           ts_ms=int(t), user_id=user.user_id, type=etype, item_id=item.item_id,
                           request_id=rid, position=pos, price=item.price, quantity=qty,
                           device=device, country=country, surface="home" if rid else "pdp")
        self.sink.event(user.user_id, value)
        with self.lock:
            self.stats.event(TYPE[etype], user.bot)

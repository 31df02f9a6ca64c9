"""Golden-frame tests: the exact JSON shapes of ../shared/reference/bybit-v5-public.md."""

from __future__ import annotations

import json

import pytest

from service.market.bybit import (
    Ack,
    FrameError,
    KlineFrame,
    Notice,
    Pong,
    SubscriptionBook,
    is_already_subscribed,
    kline_topic,
    parse_frame,
    parse_topic,
    ping_message,
    rejected_topic,
    subscribe_message,
)

# §2.1, verbatim (official example of a kline push)
OFFICIAL_PUSH = """{
  "topic": "kline.5.BTCUSDT",
  "data": [
    {
      "start": 1672324800000,
      "end": 1672325099999,
      "interval": "5",
      "open": "16649.5",
      "close": "16677",
      "high": "16677",
      "low": "16608",
      "volume": "2.081",
      "turnover": "34666.4005",
      "confirm": false,
      "timestamp": 1672324988882
    }
  ],
  "ts": 1672324988882,
  "type": "snapshot"
}"""

# §2.4 closed candle
CLOSED_PUSH = (
    '{"topic":"kline.5.BTCUSDT","data":[{"start":1672324800000,"end":1672325099999,"interval":"5",'
    '"open":"16649.5","close":"16680.5","high":"16690","low":"16608","volume":"3.5","turnover":"58000.1",'
    '"confirm":true,"timestamp":1672325099870}],"ts":1672325100003,"type":"snapshot"}'
)

SUB_ACK = (
    '{"success": true, "ret_msg": "", '
    '"conn_id": "3cd84cb1-4d06-4a05-930a-2efe5fc70f0f", "req_id": "", "op": "subscribe"}'
)
FAILED_ACK = (
    '{"success": false, "ret_msg": "error:handler not found,topic:kline.7.BTCUSDT", '
    '"conn_id": "x", "req_id": "r1", "op": "subscribe"}'
)
ALREADY_ACK = (
    '{"success": false, "ret_msg": "error:already subscribed,topic:kline.5.BTCUSDT", '
    '"conn_id": "x", "req_id": "r2", "op": "subscribe"}'
)
INVALID_OP = '{"success": false, "ret_msg": "error:invalid op", "conn_id": "x"}'
PONG = (
    '{"success": true, "ret_msg": "pong", '
    '"conn_id": "465772b1-7630-4fdc-a492-e003e6f0f260", "req_id": "", "op": "ping"}'
)
OPTION_PONG = '{"args":["1672916271846"],"op":"pong"}'


def test_official_push_parses_with_prices_from_strings() -> None:
    frame = parse_frame(OFFICIAL_PUSH)
    assert isinstance(frame, KlineFrame)
    assert (frame.topic, frame.symbol, frame.interval, frame.ts) == (
        "kline.5.BTCUSDT",
        "BTCUSDT",
        "5",
        1672324988882,
    )
    (k,) = frame.klines
    assert k.start == 1672324800000 and k.end == 1672325099999
    assert (k.open, k.high, k.low, k.close) == (16649.5, 16677.0, 16608.0, 16677.0)
    assert (k.volume, k.turnover) == (2.081, 34666.4005)
    assert k.confirm is False


def test_closed_push_is_confirmed_and_takes_start_not_timestamp() -> None:
    frame = parse_frame(CLOSED_PUSH.encode())  # bytes work too
    assert isinstance(frame, KlineFrame)
    (k,) = frame.klines
    assert k.confirm is True
    assert k.start == 1672324800000  # not "timestamp" (ccxt #18181)
    assert frame.ts == 1672325100003


def test_every_element_of_data_is_parsed_in_order() -> None:
    msg = json.loads(CLOSED_PUSH)
    nxt = dict(msg["data"][0], start=1672325100000, end=1672325399999, confirm=False)
    nxt.update(open="16680.5", high="16680.5", low="16680.5", close="16680.5", volume="0")
    msg["data"].append(nxt)
    frame = parse_frame(json.dumps(msg))
    assert isinstance(frame, KlineFrame)
    assert [(k.start, k.confirm) for k in frame.klines] == [
        (1672324800000, True),
        (1672325100000, False),
    ]


def test_acks_and_pongs() -> None:
    ack = parse_frame(SUB_ACK)
    assert ack == Ack("subscribe", True, "", "", "3cd84cb1-4d06-4a05-930a-2efe5fc70f0f")
    failed = parse_frame(FAILED_ACK)
    assert isinstance(failed, Ack) and not failed.success and failed.req_id == "r1"
    assert rejected_topic(failed.ret_msg) == "kline.7.BTCUSDT"
    already = parse_frame(ALREADY_ACK)
    assert isinstance(already, Ack) and is_already_subscribed(already.ret_msg)
    assert rejected_topic(already.ret_msg) is None
    invalid = parse_frame(INVALID_OP)
    assert isinstance(invalid, Ack) and not invalid.success and invalid.op == ""
    pong = parse_frame(PONG)
    assert pong == Pong(req_id="", conn_id="465772b1-7630-4fdc-a492-e003e6f0f260")
    assert isinstance(parse_frame(OPTION_PONG), Pong)


def test_unknown_json_is_a_notice() -> None:
    assert parse_frame('{"hello": 1}') == Notice({"hello": 1})


def _mutated(**changes: object) -> str:
    msg = json.loads(CLOSED_PUSH)
    msg["data"][0].update(changes)
    return json.dumps(msg)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json {", "malformed_json"),
        (CLOSED_PUSH[:40], "malformed_json"),
        (b"\xff\xfe\x00garbage", "malformed_json"),
        ("[1, 2]", "bad_shape"),
        ('{"topic": "kline.5.BTCUSDT", "data": {}, "ts": 1}', "bad_shape"),
        ('{"topic": "kline.5.BTCUSDT", "data": [], "ts": 1}', "bad_shape"),
        ('{"topic": "orderbook.50.BTCUSDT", "data": [{}], "ts": 1}', "unknown_topic"),
        ('{"topic": "kline.5.btcusdt", "data": [{}], "ts": 1}', "unknown_topic"),
        (_mutated(open=16649.5), "bad_value"),  # a float on the wire, not a string
        (_mutated(close="-1"), "bad_price"),
        (_mutated(volume="NaN"), "bad_price"),
        (_mutated(low="1e400"), "bad_price"),  # overflows to inf
        (_mutated(open="0"), "bad_price"),
        (_mutated(confirm="true"), "bad_value"),
        (_mutated(start="1672324800000"), "bad_value"),
        (_mutated(start=1672324800001), "off_grid"),  # off the 5-minute grid
        (_mutated(interval="1"), "bad_value"),  # disagrees with the topic
        (_mutated(high="16000"), "bad_ohlc"),  # high below open/close
        (_mutated(low="16700"), "bad_ohlc"),  # low above open/close
    ],
)
def test_malformed_frames_raise_frame_error_with_a_bounded_reason(
    raw: str | bytes, reason: str
) -> None:
    with pytest.raises(FrameError) as err:
        parse_frame(raw)
    assert err.value.reason == reason


def test_request_builders_match_the_documented_shapes() -> None:
    assert json.loads(subscribe_message(["kline.5.BTCUSDT", "kline.5.ETHUSDT"], "r7")) == {
        "req_id": "r7",
        "op": "subscribe",
        "args": ["kline.5.BTCUSDT", "kline.5.ETHUSDT"],
    }
    assert json.loads(ping_message("100001")) == {"req_id": "100001", "op": "ping"}
    assert kline_topic("5", "BTCUSDT") == "kline.5.BTCUSDT"
    assert parse_topic("kline.5.BTCUSDT") == ("5", "BTCUSDT")
    assert parse_topic("kline.7.BTCUSDT") is None
    assert parse_topic("publicTrade.BTCUSDT") is None


def test_subscription_book_batches_matches_acks_and_drops_rejected_topics() -> None:
    topics = [f"kline.5.S{i:02d}USDT" for i in range(23)]
    book = SubscriptionBook(topics, batch=10, ack_timeout_s=5.0)
    reqs = [json.loads(r) for r in book.connect(now=100.0)]
    assert [len(r["args"]) for r in reqs] == [10, 10, 3]
    assert len({r["req_id"] for r in reqs}) == 3
    assert book.deadline() == 105.0
    ok = book.on_ack(Ack("subscribe", True, "", reqs[0]["req_id"], "c"), now=101.0)
    assert ok is not None and ok.subscribed == reqs[0]["args"] and not ok.resend
    bad = reqs[1]["args"][4]
    out = book.on_ack(
        Ack("subscribe", False, f"error:handler not found,topic:{bad}", reqs[1]["req_id"], "c"),
        now=102.0,
    )
    assert out is not None and out.rejected == bad
    (again,) = [json.loads(r) for r in out.resend]
    assert again["args"] == [t for t in reqs[1]["args"] if t != bad]
    assert bad not in book.active() and len(book.active()) == 22
    assert book.on_ack(Ack("subscribe", True, "", "unknown-id", "c"), now=103.0) is None


def test_subscription_book_retries_transient_refusals_then_gives_up() -> None:
    book = SubscriptionBook(["kline.5.BTCUSDT"], max_attempts=3)
    (req,) = [json.loads(r) for r in book.connect(now=0.0)]
    for attempt in (1, 2):
        out = book.on_ack(Ack("subscribe", False, "error:busy", req["req_id"], "c"), now=1.0)
        assert out is not None and not out.give_up and out.resend, attempt
        (req,) = [json.loads(r) for r in out.resend]
    out = book.on_ack(Ack("subscribe", False, "error:busy", req["req_id"], "c"), now=2.0)
    assert out is not None and out.give_up
    already = SubscriptionBook(["kline.5.BTCUSDT"])
    (req,) = [json.loads(r) for r in already.connect(now=0.0)]
    msg = "error:already subscribed,topic:kline.5.BTCUSDT"
    out = already.on_ack(Ack("subscribe", False, msg, req["req_id"], "c"), now=1.0)
    assert out is not None and out.subscribed == ["kline.5.BTCUSDT"]


def test_fast_kline_parse_accepts_and_rejects_exactly_what_the_checked_one_does() -> None:
    from service.market.bybit import _parse_kline_checked, parse_kline

    base = {
        "start": 1743819900000,
        "end": 1743820199999,
        "interval": "5",
        "open": "83910",
        "close": "83806.6",
        "high": "83943.9",
        "low": "83793",
        "volume": "148.332",
        "turnover": "12431200.5912",
        "confirm": True,
        "timestamp": 1743820199999,
    }
    bad_values: list[object] = ["nan", "inf", "-inf", "-1", "0", "1e400", "x", "", 5, 5.0, None]
    cases: list[object] = [base, dict(base, confirm=False), [], "x", None]
    for key in ("open", "high", "low", "close", "volume", "turnover"):
        cases.append({k: v for k, v in base.items() if k != key})
        cases += [dict(base, **{key: v}) for v in bad_values]
    for key, values in {
        "start": [True, 1743819900001, "1743819900000", 1.0, None],
        "confirm": [1, "true", None],
        "interval": ["1", 5, None],
    }.items():
        cases.append({k: v for k, v in base.items() if k != key})
        cases += [dict(base, **{key: v}) for v in values]
    cases += [
        dict(base, high="83800"),  # below the open
        dict(base, low="83900"),  # above the close
        dict(base, volume="0", turnover="0"),  # a real zero-volume bar
        dict(base, open="83943.9", close="83793"),  # open at the high, close at the low
    ]
    accepted = 0
    for obj in cases:
        try:
            want: object = _parse_kline_checked(obj, "BTCUSDT", "5")
        except FrameError as e:
            want = ("error", e.reason)
        try:
            got: object = parse_kline(obj, "BTCUSDT", "5")
        except FrameError as e:
            got = ("error", e.reason)
        assert got == want, obj
        accepted += not isinstance(want, tuple)
    # base, confirm=false, no turnover, volume "0", turnover "0", the last two extra cases
    assert accepted == 7

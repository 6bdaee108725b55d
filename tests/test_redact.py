"""Secret redaction (pyx_magics.core.redact): values from the env, their encodings, shapes, streams."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import secrets
import time
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyx_magics.core.redact import (
    MASK,
    POLICY,
    Redactor,
    is_secret_name,
    secrets_from_env,
)


def canary() -> str:
    return "cnry" + secrets.token_urlsafe(18)


@pytest.fixture
def secret() -> str:
    return canary()


@pytest.fixture
def red(secret: str) -> Redactor:
    return Redactor.from_env({"API_TOKEN": secret, "HOME": "/home/me", "PATH": "/usr/bin"})


def collect(red: Redactor, chunks: list[str], *, flush: bool = True) -> str:
    out: list[str] = []
    stream = red.stream(out.append)
    for chunk in chunks:
        stream.write(chunk)
    if flush:
        stream.flush()
    return "".join(out)


# ---------------------------------------------------------------- env secrets


def test_secret_names_are_recognised_case_insensitively():
    for name in ("DB_PASSWORD", "pgpasswd", "Client_Secret", "GITHUB_TOKEN", "ssh_key", "GOOGLE_CREDENTIALS"):
        assert is_secret_name(name), name
    for name in ("HOME", "PATH", "DATABASE_URL", "USER", "PWD"):
        assert not is_secret_name(name), name


def test_secrets_from_env_takes_secret_named_values_and_url_passwords_but_not_short_or_flag_values():
    env = {
        "API_TOKEN": "tok-123456",
        "DATABASE_URL": "postgresql://app:pg%40pass@db.internal:5432/orders",
        "REDIS_URL": "redis://:redispw@cache:6379/0",
        "PLAIN_URL": "https://example.com/x",
        "SHORT_KEY": "abc",
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": "/home/me",
    }
    found = secrets_from_env(env)
    assert found == ["tok-123456", "pg%40pass", "pg@pass", "redispw"]


def test_os_environ_is_the_default_source(monkeypatch: pytest.MonkeyPatch, secret: str):
    monkeypatch.setenv("PYX_TEST_SECRET", secret)
    assert secret in secrets_from_env()
    assert secret not in Redactor.from_env().text(f"x {secret} y")


def test_env_secret_is_masked_in_text_and_counted(red: Redactor, secret: str):
    out = red.text(f"connecting with {secret} now; again {secret}")
    assert secret not in out
    assert out == f"connecting with {MASK} now; again {MASK}"
    assert red.counts == {"env_value": 2}


def test_values_shorter_than_four_characters_are_not_value_redacted():
    red = Redactor.from_env({"SHORT_KEY": "abc", "OTHER_TOKEN": "abcd"}, extra=["xy"])
    assert red.text("abc xy") == "abc xy"
    assert red.text("abcd") == MASK
    red.add_secret("ab")
    assert red.text("ab") == "ab"


def test_added_secret_is_masked_from_then_on(secret: str):
    red = Redactor()
    assert red.text(secret) == secret
    red.add_secret(secret)
    assert red.text(f"p={secret}") == f"p={MASK}"
    assert red.counts == {"secret_value": 1}
    assert Redactor([secret]).text(secret) == MASK


def test_longer_secret_wins_over_a_shorter_one_it_contains(secret: str):
    red = Redactor([secret[:8], secret])
    assert red.text(f"<{secret}>") == f"<{MASK}>"
    # overlapping secrets are masked as one run: nothing of either remains
    a, b = canary(), canary()
    both = Redactor([a + b[:5], b])
    assert both.text(a + b) == MASK


def test_max_secret_len_covers_the_longest_encoded_form(secret: str):
    assert Redactor().max_secret_len == 0
    red = Redactor([secret])
    assert red.max_secret_len == len(binascii.hexlify(secret.encode()))


def test_repr_does_not_show_secrets(red: Redactor, secret: str):
    assert secret not in repr(red)
    assert red.policy == POLICY


# ---------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: quote(s),
        lambda s: quote_plus(s),
        lambda s: base64.b64encode(s.encode()).decode(),
        lambda s: base64.b64encode(s.encode()).decode().rstrip("="),
        lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
        lambda s: binascii.hexlify(s.encode()).decode(),
        lambda s: json.dumps(s)[1:-1],
    ],
    ids=["quote", "quote_plus", "b64", "b64-nopad", "b64-urlsafe", "hex", "json"],
)
def test_encoded_forms_of_a_secret_are_masked(encode, secret: str):
    nasty = secret + ' +/&"\\é'  # makes every encoding differ from the raw value
    red = Redactor.from_env({"DB_PASSWORD": nasty})
    form = encode(nasty)
    assert form != nasty
    out = red.text(f"value: {form} end")
    assert form not in out and MASK in out
    assert out.startswith("value: ") and out.endswith(" end")


@pytest.mark.parametrize("offset", range(6))
@pytest.mark.parametrize("alphabet", ["std", "urlsafe"])
def test_secret_inside_a_longer_base64_blob_is_masked_at_every_alignment(offset: int, alphabet: str, secret: str):
    enc = base64.b64encode if alphabet == "std" else base64.urlsafe_b64encode
    blob = enc(secrets.token_bytes(30 + offset) + secret.encode() + secrets.token_bytes(31)).decode()
    out = Redactor([secret]).text(blob)
    assert MASK in out
    # what is left around the mask is at most the neighbour-dependent edge characters
    left, _, right = out.partition(MASK)
    assert len(blob) - len(left) - len(right) >= len(secret) * 4 // 3 - 2


def test_short_encoded_variants_do_not_mask_random_text():
    red = Redactor(["abcd"])  # base64 "YWJjZA" would be 6 chars: too short to use
    assert red.text("YWJjZA and YWJj") == "YWJjZA and YWJj"
    assert red.text("YWJjZA==") == MASK


# ---------------------------------------------------------------- bytes


def test_bytes_are_redacted_and_non_utf8_bytes_preserved(red: Redactor, secret: str):
    raw = b"\xff\xfe head \x80" + secret.encode() + b" tail \xc3\x28 \xe9"
    out = red.bytes(raw)
    assert out == b"\xff\xfe head \x80" + MASK.encode() + b" tail \xc3\x28 \xe9"
    junk = bytes(range(256)) * 3
    assert red.bytes(junk) == junk


# ---------------------------------------------------------------- json


def test_json_is_redacted_as_a_deep_copy_in_keys_values_and_by_key_name(red: Redactor, secret: str):
    doc = {
        "user": "alice",
        "nested": {"list": [f"a {secret} b", (1, secret)], secret: "key is secret"},
        "password": "hunter2",
        "Authorization": "Basic Zm9vOmJhcg==",
        "db": {"dsn": "host=h dbname=d", "pwd": 1234, "api_key": None, "cookie": ""},
        "use_token": True,
        "count": 3,
    }
    before = copy.deepcopy(doc)
    out = red.json(doc)
    assert doc == before, "the original must not be mutated"
    assert secret not in json.dumps(out)
    assert out["user"] == "alice" and out["count"] == 3
    assert out["nested"]["list"] == [f"a {MASK} b", [1, MASK]]
    assert out["nested"][MASK] == "key is secret"
    assert out["password"] == MASK and out["Authorization"] == MASK
    assert out["db"] == {"dsn": MASK, "pwd": MASK, "api_key": None, "cookie": ""}
    assert out["use_token"] is True
    assert red.counts["key_name"] == 4 and red.counts["env_value"] == 3


# ---------------------------------------------------------------- URLs and shapes


def test_url_password_from_env_is_masked_and_the_rest_of_the_url_stays_readable():
    env = {"DATABASE_URL": "postgresql://app:S3cr3t-pw@db.internal:5432/orders"}
    red = Redactor.from_env(env)
    out = red.text("connecting to postgresql://app:S3cr3t-pw@db.internal:5432/orders; pw was S3cr3t-pw")
    assert out == f"connecting to postgresql://app:{MASK}@db.internal:5432/orders; pw was {MASK}"
    assert red.counts == {"url_password": 2}


def test_url_password_shape_is_masked_without_env():
    red = Redactor()
    assert red.text("redis://:pw@cache:6379/0 and https://u:p@ss@h/x") == (
        f"redis://:{MASK}@cache:6379/0 and https://u:{MASK}@h/x"
    )
    assert red.text("https://example.com:8080/path?a=b") == "https://example.com:8080/path?a=b"
    assert red.counts == {"url_password": 2}


def test_pem_private_key_block_is_masked_whole_and_counted():
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nq83vEXAMPLE==\n-----END RSA PRIVATE KEY-----"
    red = Redactor()
    assert red.text(f"before\n{key}\nafter") == f"before\n{MASK}\nafter"
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    assert red.text(cert) == cert
    # an unterminated block is masked to the end rather than leaked
    assert red.text("x -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n") == f"x {MASK}"
    assert red.counts == {"pem": 2}


def test_jwt_aws_key_bearer_basic_and_dsn_password_shapes_are_masked():
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    red = Redactor()
    cases = {
        f"token {jwt} ok": f"token {MASK} ok",
        "id AKIAIOSFODNN7EXAMPLE in log": f"id {MASK} in log",
        "XAKIAIOSFODNN7EXAMPLE": "XAKIAIOSFODNN7EXAMPLE",
        "Authorization: Bearer abc.DEF-123~x/y+z== rest": f"Authorization: Bearer {MASK} rest",
        "authorization: basic dXNlcjpwYXNz": f"authorization: basic {MASK}",
        "host=db password=s3cret user=app": f"host=db password={MASK} user=app",
        "host=db password = 'it\\'s secret' port=5432": f"host=db password = '{MASK}' port=5432",
        "PGPASSWORD=hunter2 psql": f"PGPASSWORD={MASK} psql",
        "Server=x;Pwd=abc123;Db=y": f"Server=x;Pwd={MASK};Db=y",
        '{"dsn": "host=h password=abc"}': '{"dsn": "host=h password=' + MASK + '"}',
    }
    for text, expected in cases.items():
        assert red.text(text) == expected, text
    assert red.counts == {"jwt": 1, "aws_access_key": 1, "bearer": 1, "basic_auth": 1, "dsn_password": 5}


def test_redacting_twice_changes_nothing_and_counts_nothing(red: Redactor, secret: str):
    once = red.text(f"{secret} postgresql://u:pw@h/db password=x Bearer tok")
    counts = dict(red.counts)
    assert red.text(once) == once
    assert red.counts == counts


def test_counts_accumulate_over_the_redactors_lifetime(red: Redactor, secret: str):
    red.text(secret)
    red.bytes(secret.encode())
    red.json({"k": secret, "token": "x"})
    collect(red, [secret, "\n"])
    assert red.counts == {"env_value": 4, "key_name": 1}


# ---------------------------------------------------------------- streams


def test_stream_masks_a_secret_split_at_every_point_across_two_writes(red: Redactor, secret: str):
    line = f"log: {secret} done\n"
    for i in range(len(line) + 1):
        assert collect(red, [line[:i], line[i:]]) == f"log: {MASK} done\n", i


def test_stream_emits_a_completed_line_promptly_and_holds_the_partial_one(red: Redactor, secret: str):
    out: list[str] = []
    stream = red.stream(out.append)
    stream.write("first line\nsecond ")
    assert out == ["first line\n"]
    stream.write(secret[:5])
    assert "".join(out) == "first line\n"
    stream.write(secret[5:] + " end\r")
    assert "".join(out) == f"first line\nsecond {MASK} end\r"
    stream.write("tail")
    stream.flush()
    assert "".join(out).endswith("tail")


def test_stream_holds_a_pem_block_until_its_end_line():
    out: list[str] = []
    stream = Redactor().stream(out.append)
    stream.write("a\n-----BEGIN PRIVATE KEY-----\n")
    stream.write("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n")
    assert "".join(out) == "a\n"
    stream.write("-----END PRIVATE KEY-----\nb\n")
    assert "".join(out) == f"a\n{MASK}\nb\n"


def test_stream_holds_the_start_of_a_multiline_secret():
    ml = "line-one-" + secrets.token_hex(6) + "\nline-two-" + secrets.token_hex(6)
    red = Redactor([ml])
    out: list[str] = []
    stream = red.stream(out.append)
    head, tail = ml.split("\n")
    stream.write(f"x\n{head}\n")
    assert "".join(out) == "x\n"
    stream.write(f"{tail}\n")
    assert "".join(out) == f"x\n{MASK}\n"


def test_stream_cuts_an_overlong_line_without_splitting_a_secret(red: Redactor, secret: str):
    filler = "y" * 70_000
    chunks = [filler, secret[:3], secret[3:], filler]
    out: list[str] = []
    stream = red.stream(out.append)
    for chunk in chunks:
        stream.write(chunk)
    assert out, "an over-long line must not be held forever"
    stream.flush()
    assert "".join(out) == filler + MASK + filler


FRAGMENTS = st.sampled_from(
    ["a", "Z", "0", " ", "\n", "\r", "\t", "=", "@", ":", "/", ".", "'", "é", "\udcff", "password=",
     "pwd='x y' ", "Bearer ", "://u:", "eyJ", "AKIA", "-----BEGIN RSA PRIVATE KEY-----",
     "-----END RSA PRIVATE KEY-----"]
)
noise = st.lists(FRAGMENTS, max_size=25).map("".join)


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=st.from_regex(r"[A-Za-z0-9_-]{16,30}", fullmatch=True),
    form=st.sampled_from(["raw", "b64", "hex", "quote"]),
    before=noise,
    after=noise,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_stream_output_equals_text_of_the_whole_and_contains_no_secret(secret, form, before, after, cuts):
    encoded = {
        "raw": secret,
        "b64": base64.b64encode(secret.encode()).decode(),
        "hex": secret.encode().hex(),
        "quote": quote(secret + "/+"),
    }[form]
    red = Redactor([secret, secret + "/+"])
    whole = before + encoded + after
    out = collect(red, chunked(whole, cuts))
    assert out == red.text(whole)
    assert secret not in out and encoded not in out


@settings(max_examples=150, deadline=None)
@given(
    secret=st.from_regex(r"[a-z0-9]{6,12}\r?\n[a-z0-9]{6,12}", fullmatch=True),
    before=noise,
    after=noise,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_stream_with_a_multiline_secret_equals_text_of_the_whole(secret, before, after, cuts):
    red = Redactor([secret])
    whole = before + secret + after
    out = collect(red, chunked(whole, cuts))
    assert out == red.text(whole)
    assert secret not in out


# ---------------------------------------------------------------- performance


def test_text_on_megabytes_of_logs_with_ten_secrets_is_fast():
    env = {f"SVC{i}_TOKEN": secrets.token_urlsafe(24) for i in range(10)}
    red = Redactor.from_env(env)
    line = "2024-05-01T12:00:00Z INFO GET /api/v1/orders?id=1234 status=200 latency_ms=12 user=alice\n"
    text = line * 40_000  # ~3.6 MB
    text += " ".join(env.values())
    start = time.perf_counter()
    out = red.text(text)
    elapsed = time.perf_counter() - start
    assert not any(v in out for v in env.values())
    assert len(text) / elapsed > 10e6, f"{len(text) / elapsed / 1e6:.1f} MB/s"  # measured ~100+ MB/s


def test_json_keys_are_masked_by_whole_words_so_evidence_fields_stay_readable():
    """``key``/``cache_key``/``tokens_used`` are data in Redis and Kafka evidence; ``api_key`` and friends are not."""
    red = Redactor()
    doc = {"key": "order:1042", "cache_key": "order:*", "tokens_used": 12, "keyspace": {"db0": 5},
           "api_key": "abc123", "accessToken": "t0k3n", "DB_PASSWORD": "pw12345", "client_secret": "s3cr3t"}
    out = red.json(doc)
    assert out["key"] == "order:1042" and out["cache_key"] == "order:*" and out["tokens_used"] == 12
    assert out["keyspace"] == {"db0": 5}
    assert all(out[k] == MASK for k in ("api_key", "accessToken", "DB_PASSWORD", "client_secret"))

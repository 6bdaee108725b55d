"""Connection settings from env vars and .env files (read, never written)."""

from __future__ import annotations

import os

import pytest

from pyx_magics.core.errors import UsageProblem
from pyx_magics.datalayer.config import endpoints, load_environ, parse_dotenv


def test_dotenv_lines_with_export_quotes_and_comments_parse():
    text = "# tunnels\nexport DB_HOST=127.0.0.1\nDB_PORT='15432'\nREDIS_URL=\"redis://:p w@127.0.0.1:16379/2\"\n" \
           "KAFKA_BROKERS=127.0.0.1:19092 # local forward\nnot a line\n"
    assert parse_dotenv(text) == {"DB_HOST": "127.0.0.1", "DB_PORT": "15432",
                                  "REDIS_URL": "redis://:p w@127.0.0.1:16379/2", "KAFKA_BROKERS": "127.0.0.1:19092"}


def test_dotenv_files_are_read_and_the_real_env_wins_and_nothing_is_written(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".config" / "pyx").mkdir(parents=True)
    (home / ".config" / "pyx" / ".env").write_text("DB_PORT=1111\nREDIS_PORT=2222\n")
    (tmp_path / ".env").write_text("DB_PORT=3333\nKAFKA_BROKERS=127.0.0.1:4444\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAFKA_BROKERS", "127.0.0.1:5555")
    for var in ("DATABASE_URL", "REDIS_URL", "DB_HOST", "REDIS_HOST"):
        monkeypatch.delenv(var, raising=False)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    env = load_environ(cwd=tmp_path)
    assert env["DB_PORT"] == "3333" and env["REDIS_PORT"] == "2222" and env["KAFKA_BROKERS"] == "127.0.0.1:5555"
    eps = endpoints(env)
    assert (eps["postgres"][0].port, eps["redis"][0].port, eps["kafka"][0].port) == (3333, 2222, 5555)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    assert os.environ.get("DB_PORT") != "3333", "reading .env files does not change the process env"


def test_urls_give_endpoints_with_decoded_credentials_and_options():
    eps = endpoints({"DATABASE_URL": "postgresql://app:p%40ss@127.0.0.1:6543/orders?sslmode=require",
                     "REDIS_URL": "redis://:secret@127.0.0.1:6380/3",
                     "KAFKA_BROKERS": "127.0.0.1:9092, 127.0.0.1:9093"})
    pg = eps["postgres"][0]
    assert (pg.host, pg.port, pg.user, pg.password, pg.database, pg.extra) == (
        "127.0.0.1", 6543, "app", "p@ss", "orders", (("sslmode", "require"),))
    assert "p@ss" not in repr(pg)
    assert (eps["redis"][0].port, eps["redis"][0].database) == (6380, "3")
    assert [b.port for b in eps["kafka"]] == [9092, 9093]


@pytest.mark.parametrize("env", [{"DB_PORT": "http"}, {"REDIS_PORT": "70000"}, {"KAFKA_BROKERS": "nohostport"}])
def test_malformed_settings_are_usage_errors_naming_the_variable(env):
    with pytest.raises(UsageProblem, match=next(iter(env))):
        endpoints(env)

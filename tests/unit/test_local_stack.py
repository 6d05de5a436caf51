"""`segcam up` needs no Docker: it uses the configured Redis, starts one if none answers, or says how to get one."""

from __future__ import annotations

import pytest

from stack import local
from stack.local import LocalStack, StackError, free_port, redis_answers


def test_configured_redis_is_used_when_it_answers(redis_url, tmp_path):
    s = LocalStack(env={"SEGCAM_REDIS_URL": redis_url}, log_dir=tmp_path)
    assert s.ensure_redis() == redis_url and s.redis_proc is None


def test_a_local_redis_server_is_started_on_a_free_port_when_none_answers(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    s = LocalStack(env={"SEGCAM_REDIS_URL": dead}, log_dir=tmp_path)
    try:
        url = s.ensure_redis()
        assert url != dead and redis_answers(url) and s.env["SEGCAM_REDIS_URL"] == url
    finally:
        s.stop()
    assert not redis_answers(url)


def test_without_redis_server_it_says_exactly_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(local.shutil, "which", lambda _name: None)
    s = LocalStack(env={"SEGCAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, log_dir=tmp_path)
    with pytest.raises(StackError) as e:
        s.ensure_redis()
    assert "apt-get install redis-server" in str(e.value) and "docker run" in str(e.value)

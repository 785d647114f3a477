"""Fixtures shared by the Flower engine tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def run_identity():
    """Messages built outside a ServerApp (the loopback Grid, fake grids) need a run id."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None

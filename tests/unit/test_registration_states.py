"""``RegistrationStates``: the one place a registration's state changes, read through ``AsyncRegistration``."""

from __future__ import annotations

import asyncio

import pytest

from discovery import Instance, RegistrationState
from discovery.registry.registration import AsyncRegistration, RegistrationStates


async def _nothing(*_: object) -> None:
    return None


def test_deregistered_is_final_and_a_failing_listener_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    states = RegistrationStates()
    registration = AsyncRegistration(Instance("web", "w-1", "127.0.0.1", 80), 10.0, 11.0, _nothing, _nothing, states)
    seen: list[RegistrationState] = []

    def broken(registration: AsyncRegistration, state: RegistrationState) -> None:
        raise RuntimeError("listener bug")

    registration.on_change(broken)
    remove = registration.on_change(lambda handle, state: seen.append(state))
    for state in (RegistrationState.REGISTERED, RegistrationState.LOST, RegistrationState.RESTORED):
        states.enter(state)
    states.enter(RegistrationState.DEREGISTERED)
    states.enter(RegistrationState.LOST)  # a backend's late report after deregistration changes nothing
    assert registration.state is RegistrationState.DEREGISTERED and not registration.active
    assert seen == [RegistrationState.REGISTERED, RegistrationState.LOST, RegistrationState.RESTORED,
                    RegistrationState.DEREGISTERED]
    assert registration.history == tuple(seen)
    assert "listener failed" in caplog.text
    remove()
    assert repr(registration) == "<Registration default/web/w-1 deregistered>"


async def test_wait_for_a_state_entered_before_or_later() -> None:
    states = RegistrationStates()
    registration = AsyncRegistration(Instance("web", "w-1", "127.0.0.1", 80), 10.0, 11.0, _nothing, _nothing, states)
    states.enter(RegistrationState.REGISTERED)
    await registration.wait_for(RegistrationState.REGISTERED, timeout=1)
    waiting = asyncio.ensure_future(registration.wait_for(RegistrationState.RESTORED, timeout=5))
    states.enter(RegistrationState.LOST)
    await asyncio.sleep(0)
    assert not waiting.done()
    states.enter(RegistrationState.RESTORED)
    await waiting
    with pytest.raises(TimeoutError):
        await registration.wait_for(RegistrationState.DEREGISTERED, timeout=0.05)

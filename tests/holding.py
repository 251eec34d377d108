"""Holding a server's batcher, so that the requests that arrive meanwhile gather into stages."""

import contextlib


@contextlib.contextmanager
def holding_the_batcher(server):
    """While in the block (or until ``release()``), the server reads and stages requests but
    does not run them; they run together once released. Yields ``release``."""
    held = True
    run = server._run_stages

    def held_run():
        if held:  # the run stays scheduled (so no other is): look again in a millisecond
            server._loop.call_later(0.001, held_run)
        else:
            run()

    def release():
        nonlocal held
        held = False

    server._run_stages = held_run  # an instance attribute: accept() schedules self._run_stages
    try:
        yield release
    finally:
        release()
        del server._run_stages

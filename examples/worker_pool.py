"""A pool of workers sharing one type queue, with retries, dead letters and a breaker."""

from functools import partial

import anyio

from tta_agent_coordination import (
    AgentId,
    CircuitBreaker,
    CircuitBreakerConfig,
    Delivery,
    MessageCoordinator,
    PassThroughMiddleware,
    RetryPolicy,
    connect,
)
from tta_agent_coordination.coordinator import HandleNext

JOBS = 8
FLAKY = {3, 5}  # these jobs fail every attempt
ATTEMPTS = 3


class Tally(PassThroughMiddleware):
    """Middleware: counts deliveries that are settled for good (done or dead-lettered)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.settled = 0
        self.all_settled = anyio.Event()

    async def on_handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        try:
            await call_next(delivery)
        except Exception:
            if delivery.is_last_attempt:
                self._count()  # this failure dead-letters it
            raise
        self._count()

    def _count(self) -> None:
        self.settled += 1
        if self.settled == self.expected:
            self.all_settled.set()


async def main() -> None:
    async with connect("memory://?namespace=pool") as backend:
        tally = Tally(JOBS)
        coordinator = MessageCoordinator(
            backend,
            retry_policy=RetryPolicy(max_attempts=ATTEMPTS, base=0.01, max_delay=0.05),
            middleware=[tally],
        )
        breaker = CircuitBreaker(
            backend, "renderer", CircuitBreakerConfig(failure_threshold=10, recovery_timeout=1)
        )
        done: list[int] = []

        async def render(delivery: Delivery) -> None:
            job = int(str(delivery.message.payload))

            async def call() -> None:
                if job in FLAKY:
                    msg = f"renderer crashed on job {job}"
                    raise RuntimeError(msg)

            await breaker.call(call)
            done.append(job)

        shared = AgentId("renderer")  # the type's shared queue: any instance takes work
        for job in range(JOBS):
            await coordinator.send(shared, job, max_attempts=ATTEMPTS)
        stop = anyio.Event()
        async with anyio.create_task_group() as pool:
            for name in ("r1", "r2"):
                worker = AgentId("renderer", name)
                serve = partial(coordinator.serve, concurrency=2, breaker=breaker, stop=stop)
                pool.start_soon(serve, worker, render)
            await tally.all_settled.wait()
            stop.set()
        dead = await backend.queue.dead_letters(shared)
        print("done:", sorted(done))
        for letter in dead.items:
            assert letter.message is not None
            print(f"dead letter: job {letter.message.payload} ({letter.reason}): {letter.error}")


anyio.run(main)

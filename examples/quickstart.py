"""Request/response between two agents on the in-memory backend."""

import anyio

from tta_agent_coordination import AgentId, Delivery, MessageCoordinator, connect


async def main() -> None:
    async with connect("memory://") as backend, MessageCoordinator(backend) as coordinator:
        builder = AgentId("world_builder", "wb-1")

        async def build(delivery: Delivery) -> None:
            prompt = delivery.message.payload
            await coordinator.reply(delivery, f"a world around {prompt}")

        async with anyio.create_task_group() as workers:
            await workers.start(coordinator.serve, builder, build)
            answer = await coordinator.request(builder, "a lighthouse", timeout=5)
            print(answer.payload)
            workers.cancel_scope.cancel()


anyio.run(main)

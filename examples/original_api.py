"""The original coordination API, unchanged, on the in-memory backend.

With Redis, pass a redis-py client instead of the URL: RedisMessageCoordinator(redis_client).
"""

import asyncio

from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    FailureType,
    MessageType,
    RedisMessageCoordinator,
)


async def main() -> None:
    coordinator = RedisMessageCoordinator("memory://", key_prefix="ao")
    await coordinator.configure(queue_size=100, retry_attempts=2, backoff_base=0.01)
    sender = AgentId(type="input_processor", instance="worker-1")
    recipient = AgentId(type="world_builder", instance="worker-2")
    message = AgentMessage(
        sender=sender,
        recipient=recipient,
        message_type=MessageType.REQUEST,
        payload={"text": "a cave under the sea"},
    )
    result = await coordinator.send_message(sender, recipient, message)
    print("delivered:", result.delivered)

    received = await coordinator.receive(recipient, visibility_timeout=5)
    assert received is not None
    print("received:", received.message.payload, "attempts so far:", received.delivery_attempts)
    await coordinator.nack(recipient, received.token, FailureType.TRANSIENT, "try again")
    # Due again after the backoff (0.01 s): a receive that waits is woken then, no polling.
    again = await coordinator.receive(recipient, visibility_timeout=5, wait=5)
    assert again is not None
    print("redelivered, attempts so far:", again.delivery_attempts)
    print("acked:", await coordinator.ack(recipient, again.token))
    await coordinator.aclose()


asyncio.run(main())

import asyncio


async def process(msg, cfg, snapshot, ctx):
    await asyncio.sleep(0)
    ctx.emit("data", {"body": {"async": True, "echo": msg.body}})

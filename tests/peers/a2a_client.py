"""The official Python A2A SDK (a2a-sdk) as a client of Reflex's A2A endpoint (interop test peer).

Usage: python a2a_client.py BASE_URL TOKEN STEP [ARGS...]
STEP:
  card                         fetch and print the agent card
  diagnose NS KIND NAME        send a `diagnose` message (blocking), print the reply
  remediate NS POLICY NAME     stream a `remediate` task to its end, print every event
  start NS POLICY NAME         send a `remediate` message that returns at once, print the task
  subscribe TASK_ID            subscribe to the task, print its first event (the task now)
  cancel TASK_ID               cancel the task, print it
  get TASK_ID                  get the task, print it
  list NS                      list the tasks in namespace NS (the tenant), print their ids
Prints one JSON object per line on stdout; the Rust test asserts on them.
"""
import asyncio
import json
import sys
import uuid

import httpx
from google.protobuf.json_format import MessageToDict

from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.helpers.proto_helpers import get_data_parts, get_text_parts, new_data_part, new_text_part
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    SubscribeToTaskRequest,
)


def say(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def message(data, text=None):
    parts = [new_data_part(data)]
    if text:
        parts.append(new_text_part(text))
    return Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=parts)


def as_dict(m):
    return MessageToDict(m, preserving_proto_field_name=False)


async def main(base, token, step, args):
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        card = await A2ACardResolver(http, base).get_agent_card()
        if step == "card":
            say("card", card=as_dict(card))
            return
        streaming = step in ("remediate", "subscribe")
        client = await create_client(card, client_config=ClientConfig(httpx_client=http, streaming=streaming))
        if step == "diagnose":
            ns, kind, name = args
            req = SendMessageRequest(message=message({"skill": "diagnose", "namespace": ns,
                                                      "target": {"kind": kind, "name": name}}))
            async for event in client.send_message(req):
                if event.HasField("message"):
                    say("diagnose", text=get_text_parts(event.message.parts), data=get_data_parts(event.message.parts))
        elif step in ("remediate", "start"):
            ns, policy, name = args
            req = SendMessageRequest(
                message=message({"skill": "remediate", "namespace": ns, "policy": policy,
                                 "target": {"kind": "Deployment", "name": name},
                                 "alert": {"name": "KubeContainerOOMKilled",
                                           "labels": {"namespace": ns, "deployment": name, "container": "app"}}},
                                text=f"{name} keeps getting OOM-killed"),
                configuration=SendMessageConfiguration(return_immediately=(step == "start")))
            async for event in client.send_message(req):
                kind = event.WhichOneof("payload")
                say(step, kind=kind, event=as_dict(getattr(event, kind)))
        elif step == "subscribe":
            async for event in client.subscribe(SubscribeToTaskRequest(id=args[0])):
                kind = event.WhichOneof("payload")
                say("subscribe", kind=kind, event=as_dict(getattr(event, kind)))
                break  # the first event: the task as it is now
        elif step == "cancel":
            task = await client.cancel_task(CancelTaskRequest(id=args[0]))
            say("cancel", task=as_dict(task))
        elif step == "get":
            task = await client.get_task(GetTaskRequest(id=args[0]))
            say("get", task=as_dict(task))
        elif step == "list":
            r = await client.list_tasks(ListTasksRequest(tenant=args[0], include_artifacts=True))
            say("list", ids=[t.id for t in r.tasks])
        await client.close()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
    except BaseException as e:
        while isinstance(e, BaseExceptionGroup):
            e = e.exceptions[0]
        say("error", type=type(e).__name__, message=str(e))
        sys.exit(1)

"""A ding-dong bot for puppet-rs (or any wechaty.Puppet service), from stubs generated with
grpcio-tools (./generate.sh). It answers every text "ding" with "dong".

    WECHATY_PUPPET_SERVICE_ENDPOINT=127.0.0.1:8788 WECHATY_PUPPET_SERVICE_TOKEN=... python bot.py
"""
import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402
from wechaty import puppet_pb2_grpc  # noqa: E402
from wechaty.puppet import base_pb2, event_pb2, message_pb2  # noqa: E402

# wechaty-puppet's TypeScript number for text messages: what travels in MessagePayloadResponse.type
# (not the proto enum's MESSAGE_TYPE_TEXT).
TEXT = 7
log = logging.getLogger("dingdong")


def serve(stub, metadata):
    """Follows one event stream until it ends."""
    stream = stub.Event(event_pb2.EventRequest(), metadata=metadata)
    stub.Start(base_pb2.StartRequest(), metadata=metadata)
    log.info("listening for events")
    me = ""
    for event in stream:
        payload = json.loads(event.payload)
        if event.type == event_pb2.EVENT_TYPE_LOGIN:
            me = payload["contactId"]
            log.info("logged in as %s", me)
        elif event.type == event_pb2.EVENT_TYPE_MESSAGE:
            msg = stub.MessagePayload(message_pb2.MessagePayloadRequest(id=payload["messageId"]), metadata=metadata)
            if msg.type != TEXT or msg.text != "ding" or msg.talker_id == me:
                continue
            conversation = msg.room_id or msg.talker_id
            sent = stub.MessageSendText(
                message_pb2.MessageSendTextRequest(conversation_id=conversation, text="dong"), metadata=metadata
            )
            log.info("ding from %s -> dong (%s)", msg.talker_id, sent.id)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=os.environ.get("WECHATY_PUPPET_SERVICE_ENDPOINT", "127.0.0.1:8788"))
    parser.add_argument("--token", default=os.environ.get("WECHATY_PUPPET_SERVICE_TOKEN"))
    args = parser.parse_args()
    if not args.token:
        parser.error("no token: pass --token or set WECHATY_PUPPET_SERVICE_TOKEN")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)

    metadata = (("authorization", f"Wechaty {args.token}"),)
    backoff = 1.0
    with grpc.insecure_channel(args.endpoint) as channel:
        stub = puppet_pb2_grpc.PuppetStub(channel)
        try:
            while True:
                try:
                    serve(stub, metadata)
                    log.info("event stream closed by the server")
                except grpc.RpcError as e:
                    log.info("event stream failed: %s %s", e.code(), e.details())
                log.info("reconnecting in %.0f s", backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30)
        except KeyboardInterrupt:
            log.info("bye")


if __name__ == "__main__":
    main()

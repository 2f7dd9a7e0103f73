"""A real SMTP server for tests/email.rs, built on aiosmtpd.

It listens on 127.0.0.1 at a port of its own (port 0) and speaks STARTTLS
(required before AUTH and MAIL) or implicit TLS with the given certificate,
and requires AUTH with the given user and password. Everything it does is
one JSON line on stdout, which the test reads:

    {"port": N}                                 once, when it listens
    {"refused": 550, "rcpt": ADDRESS}           a recipient it turned away
    {"refused": 451, "message_id": ID}          a message it told to come back
    {"message": {...}}                          a message it accepted, parsed

Recipients choose how they are answered, so a test can stage each case: a
local part starting with `reject` gets `550` at RCPT; a message to a local
part starting with `tempfail` gets `451` after its DATA the first
--tempfail-count times that Message-ID is offered (greylisting); the rest is
accepted.
"""

import argparse
import asyncio
import email
import email.policy
import json
import logging
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def say(record):
    print(json.dumps(record), flush=True)


class Handler:
    def __init__(self, tempfail_count):
        self.tempfail_count = tempfail_count
        self.offered = {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@", 1)[0].lower().startswith("reject"):
            say({"refused": 550, "rcpt": address})
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        message_id = msg["Message-ID"]
        if any(r.split("@", 1)[0].lower().startswith("tempfail") for r in envelope.rcpt_tos):
            seen = self.offered.get(message_id, 0)
            self.offered[message_id] = seen + 1
            if seen < self.tempfail_count:
                say({"refused": 451, "message_id": message_id})
                return "451 4.7.1 greylisted, try again later"
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        say({
            "message": {
                "message_id": message_id,
                "subject": msg["Subject"],
                "from": msg["From"],
                "to_header": msg["To"],
                "rcpt_tos": envelope.rcpt_tos,
                "login": session.auth_data,
                "content_type": msg.get_content_type(),
                "text": text.get_content() if text is not None else None,
                "html": html.get_content() if html is not None else None,
            }
        })
        return "250 2.0.0 accepted"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--tls", choices=["starttls", "implicit"], default="starttls")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--tempfail-count", type=int, default=2)
    args = p.parse_args()
    # Implicit TLS is TLS from the first byte, which aiosmtpd's check for
    # AUTH without STARTTLS does not know about; its warning is noise here.
    # aiosmtpd's own deprecation notices are not the test's business either.
    warnings.filterwarnings("ignore", module="aiosmtpd")
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == args.user
            and auth_data.password.decode() == args.password
        )
        # What the session keeps as auth_data: the user it logged in as.
        return AuthResult(success=ok, auth_data=auth_data.login.decode() if ok else None)

    handler = Handler(args.tempfail_count)
    implicit = args.tls == "implicit"

    def factory():
        return SMTP(
            handler,
            hostname="localhost",
            tls_context=None if implicit else context,
            require_starttls=not implicit,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=not implicit,
        )

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            factory, host="127.0.0.1", port=0, ssl=context if implicit else None
        )
        say({"port": server.sockets[0].getsockname()[1]})
        # The test ends this process by closing stdin (or killing it).
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()
        server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

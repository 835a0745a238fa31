#!/usr/bin/env python3
"""A real SMTP server on loopback for the notification tests (aiosmtpd): STARTTLS required,
AUTH (PLAIN/LOGIN) with one user required after it, every accepted mail appended to a JSON-lines
file as {from, to, data}. `--refuse N` answers the first N mails with a 451 (temporary).

Usage: smtp.py --port P --cert C --key K --user U --password W --out FILE [--refuse N]
Prints "ready" once it listens.
"""

import argparse
import signal
import json
import ssl

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    p = argparse.ArgumentParser()
    for a in ("--port", "--cert", "--key", "--user", "--password", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--refuse", type=int, default=0)
    args = p.parse_args()
    refusals = [args.refuse]

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            if refusals[0] > 0:
                refusals[0] -= 1
                return "451 4.3.0 try again later"
            with open(args.out, "a") as f:
                f.write(json.dumps({
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "data": envelope.content.decode("utf8", "replace"),
                    "tls": session.ssl is not None,
                }) + "\n")
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == args.user
              and auth_data.password.decode() == args.password)
        return AuthResult(success=ok)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=int(args.port),
        tls_context=tls, require_starttls=True,
        authenticator=authenticate, auth_required=True, auth_require_tls=True,
    )
    controller.start()
    print("ready", flush=True)
    signal.pause()


if __name__ == "__main__":
    main()

"""stdin/stdout <-> TCP relay, used as ssh's ProxyCommand to reach the tests' sshd on a free port.

Ray's cluster launcher always connects to port 22 of a node's address; ``ProxyCommand`` lets the
tests run their own sshd elsewhere without touching the machine's SSH setup.

    python tcp_relay.py HOST PORT
"""

import os
import socket
import sys
import threading


def main() -> None:
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))

    def upstream() -> None:
        while data := os.read(0, 65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := conn.recv(65536):
        os.write(1, data)


if __name__ == "__main__":
    main()

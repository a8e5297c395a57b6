"""Runs every Dubbo consumer against every Dubbo provider, directly and through the capture relay.

    python3 tests/peers/dubbo/run_matrix.py [--capture DIR]

Providers (127.0.0.1 only, free ports picked at start):
  java  Caucho Hessian2 provider (java/org/meltemi/demo/DubboPeer.java), --tag v1
  sofa  sofa-rpc-node + dubbo-remoting provider (sofa_provider.js), --tag v2
Consumers: java (DubboPeer consumer, dubbo 2.0.2), dubbo2js, sofa, python (dubbo-ssl-python).

With --capture, each pair's relayed connection is written to DIR/<consumer>-to-<provider>.c2s.bin
and .s2c.bin (the codec's test vectors). Prints one line per run and a closing
'N passed, N failed' line; exits non-zero when a pair that should work does not.
Run install.sh first.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
JAVA_CP = os.path.join(HERE, "build", "java") + ":/usr/share/java/hessian.jar"
# Caucho serialises Throwable by reflection into java.lang; Java 17 needs these opened.
JAVA = ["java", "--add-opens", "java.base/java.lang=ALL-UNNAMED",
        "--add-opens", "java.base/java.util=ALL-UNNAMED", "-cp", JAVA_CP, "org.meltemi.demo.DubboPeer"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited early: %s" % proc.args)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listening on %d" % port)


def start(cmd, log):
    return subprocess.Popen(cmd, cwd=HERE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def consumer_cmd(name, port):
    return {
        "java": JAVA + ["consumer", "--port", str(port), "--dubbo", "2.0.2"],
        "dubbo2js": ["node", "dubbo2js_consumer.js", "--port", str(port)],
        "sofa": ["node", "sofa_consumer.js", "--port", str(port)],
        "python": [sys.executable, "py_consumer.py", "--port", str(port)],
        # Known bug: dubbo-ssl-python cannot read result flags 3/4/5 (sent to dubbo 2.0.2 peers).
        "python-2.0.2": [sys.executable, "py_consumer.py", "--port", str(port), "--dubbo-version", "2.0.2"],
    }[name]


def run(cmd, seconds=40):
    try:
        p = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=seconds)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")


def error_replies(logs, passed, failed, verbose):
    """Serves the codec's own error replies (built by the reply_frames example) to every
    consumer and checks each raises an RPC error carrying the message."""
    root = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
    out = os.path.join(HERE, "build", "replies")
    os.makedirs(out, exist_ok=True)
    subprocess.run(["cargo", "run", "-q", "-p", "meltemi-dubbo", "--example", "reply_frames", "--", out],
                   cwd=root, check=True)
    for kind in ["route_not_found", "unavailable", "over_limit", "timeout", "internal"]:
        port = free_port()
        server = start([sys.executable, "error_provider.py", "--port", str(port), "--frame",
                        os.path.join(out, kind + ".bin")], logs)
        try:
            wait_listening(port, server)
            for consumer in ["java", "dubbo2js", "sofa", "python"]:
                code, text = run(consumer_cmd(consumer, port))
                # split("\n"), not splitlines(): dubbo2.js leaves the Hessian length byte in the
                # message, and str.splitlines() also splits on bytes such as 0x1d.
                echo = [l for l in text.split("\n") if " echo -> " in l]
                raised = code != 124 and bool(echo) and ("meltemi test: " + kind) in echo[0]
                # Known bug: dubbo-ssl-python has no name for status 100, its reader thread dies
                # on a KeyError and the call times out instead of failing.
                expected = not (consumer == "python" and kind == "over_limit")
                ok = raised == expected
                passed += ok
                failed += not ok
                if raised:
                    what = "raises: " + repr(echo[0].split(" -> ", 1)[1][:100])
                else:
                    what = "NOT RAISED" + ("" if ok else "  <-- unexpected")
                note = "" if expected else " (known dubbo-ssl-python bug: unknown status 100, call times out)"
                print("%-13s <- error reply %-16s %s%s" % (consumer, kind, what, note), flush=True)
                if verbose or not ok:
                    for line in text.strip().splitlines():
                        print("    " + line[:300])
        finally:
            stop(server)
    return passed, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", help="directory for captured vectors")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    logs = open(os.path.join(HERE, "build", "providers.log"), "w")
    ports = {"java": free_port(), "sofa": free_port()}
    providers = {
        "java": start(JAVA + ["provider", "--port", str(ports["java"]), "--tag", "v1"], logs),
        "sofa": start(["node", "sofa_provider.js", "--port", str(ports["sofa"]), "--tag", "v2"], logs),
    }
    passed = failed = 0
    try:
        for name, proc in providers.items():
            wait_listening(ports[name], proc)
        for consumer in ["java", "dubbo2js", "sofa", "python", "python-2.0.2"]:
            for provider in ["java", "sofa"]:
                expect_ok = not (consumer == "python-2.0.2" and provider == "java")
                rc, out = run(consumer_cmd(consumer, ports[provider]))
                modes = [("direct", rc, out)]
                if a.capture and not consumer.startswith("python-"):
                    relay_port = free_port()
                    prefix = os.path.join(os.path.abspath(a.capture), "%s-to-%s" % (consumer, provider))
                    relay = start([sys.executable, "relay.py", "--listen", str(relay_port), "--target",
                                   str(ports[provider]), "--out", prefix, "--max-seconds", "120"], logs)
                    wait_listening(relay_port, relay)
                    rc2, out2 = run(consumer_cmd(consumer, relay_port))
                    time.sleep(0.3)  # let the relay flush the last bytes
                    stop(relay)
                    modes.append(("relayed", rc2, out2))
                for mode, code, text in modes:
                    ok = (code == 0) == expect_ok
                    passed += ok
                    failed += not ok
                    verdict = "works" if code == 0 else "FAILS"
                    note = "" if expect_ok else " (known dubbo-ssl-python bug, expected)"
                    print("%-13s -> %-5s %-8s %s%s%s" % (consumer, provider, mode, verdict, note,
                                                         "" if ok else "  <-- unexpected"), flush=True)
                    if a.verbose or not ok:
                        for line in text.strip().splitlines():
                            print("    " + line[:300])
        passed, failed = error_replies(logs, passed, failed, a.verbose)
    finally:
        for proc in providers.values():
            stop(proc)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

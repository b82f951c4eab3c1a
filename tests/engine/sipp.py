"""SIPp as a caller (scenarios written for each test, run as real processes against the voice engine), and as a
callee (UAS) that the gateway dials: its replies."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SIPP = shutil.which("sipp")

SDP = """v=0
o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP {payloads}
{rtpmaps}a=ptime:{ptime}
a=sendrecv
"""

INVITE = """<send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: "SIPp caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
{extra_headers}Content-Type: application/sdp
Content-Length: [len]

{sdp}
]]></send>
"""

ACK = """<send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>
"""

BYE_TEMPLATE = """<send retrans="500"><![CDATA[
BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} BYE
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>
<recv response="200" timeout="5000"/>
"""

INFO = """<send retrans="500"><![CDATA[
INFO sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: {cseq} INFO
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Type: application/dtmf-relay
Content-Length: [len]

Signal={digit}
Duration=160
]]></send>
<recv response="200" timeout="5000"/>
<pause milliseconds="150"/>
"""

BYE = BYE_TEMPLATE.replace("{cseq}", "3")

ANSWERED = """<recv response="100" optional="true"/>
<recv response="180" optional="true"/>
<recv response="183" optional="true"/>
<recv response="200" rtd="true"/>
"""

# 200 OK to the request just received (a BYE): for scenarios where the other side hangs up.
OK_TO_LAST = """<send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"""

REMOTE_BYE = '<recv request="BYE" timeout="{timeout_ms}"/>\n' + OK_TO_LAST


def sdp(payloads: str = "8 0 101", ptime: int = 20) -> str:
    names = {"0": "PCMU/8000", "8": "PCMA/8000", "101": "telephone-event/8000"}
    lines = "".join(f"a=rtpmap:{pt} {names[pt]}\n" for pt in payloads.split() if pt in names)
    if "101" in payloads.split():
        lines += "a=fmtp:101 0-15\n"
    return SDP.format(payloads=payloads, rtpmaps=lines, ptime=ptime)


def scenario(*steps: str, name: str = "dialbridge test") -> str:
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="{name}">\n{"".join(steps)}</scenario>\n'


def invite(caller: str = "+15550001111", extra_headers: str = "", payloads: str = "8 0 101", ptime: int = 20) -> str:
    extra = "".join(f"{line}\n" for line in extra_headers.splitlines() if line)
    return INVITE.format(caller=caller, extra_headers=extra, sdp=sdp(payloads, ptime))


def pause(ms: int) -> str:
    return f'<pause milliseconds="{ms}"/>\n'


def play(pcap: Path) -> str:
    return f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'


def info_digits(digits: str) -> str:
    """INFO requests with CSeq 10, 11, …: a BYE after them needs a higher one (`bye(cseq=…)`)."""
    return "".join(INFO.format(cseq=10 + i, digit=d) for i, d in enumerate(digits))


def bye(cseq: int) -> str:
    return BYE_TEMPLATE.replace("{cseq}", str(cseq))


@dataclass
class SippRun:
    process: subprocess.Popen[str]
    folder: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def errors(self) -> str:
        logs = sorted(self.folder.glob("*errors.log")) + sorted(self.folder.glob("*messages.log"))
        return "\n".join(path.read_text(errors="replace")[-4000:] for path in logs)


def start(
    folder: Path,
    xml: str,
    *,
    target: str | None,
    sip_port: int,
    media_port: int,
    service: str = "dialin",
    transport: str = "u1",
    timeout_s: int = 60,
) -> SippRun:
    """Run SIPp on `xml`: as a caller to `target`, or, with target=None, as a UAS waiting for one call."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scenario.xml"
    path.write_text(xml)
    caller = [] if target is None else [target]
    command = [
        SIPP or "sipp", *caller, "-sf", str(path), "-s", service, "-i", "127.0.0.1", "-p", str(sip_port),
        "-mi", "127.0.0.1", "-mp", str(media_port), "-m", "1", "-l", "1", "-t", transport,
        "-timeout", f"{timeout_s}s", "-timeout_error", "-trace_err", "-trace_msg", "-nostdin",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    return SippRun(process, folder)


CANCEL = """<send><![CDATA[
CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch};rport
From: "SIPp caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

]]></send>
"""

ACK_NON_2XX = """<send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch};rport
[last_From:]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
"""


def cancelled_invite(caller: str = "+15550001111", payloads: str = "8 0 101") -> str:
    """INVITE, 100/180, CANCEL (same branch, as RFC 3261 9.1 requires), 200 to the CANCEL, 487 to the INVITE, and
    the ACK for the 487 (same branch again: it belongs to the INVITE transaction)."""
    branch = "z9hG4bK-cancel-[pid]-[call_number]"
    return (
        INVITE.replace("branch=[branch]", f"branch={branch}").format(
            caller=caller, extra_headers="", sdp=sdp(payloads, 20)
        )
        + '<recv response="100" optional="true"/>\n<recv response="180"/>\n'
        + CANCEL.format(branch=branch, caller=caller)
        + '<recv response="200"/>\n<recv response="487"/>\n'
        + ACK_NON_2XX.format(branch=branch)
    )


# --- SIPp as the callee (UAS) -------------------------------------------------------------------------------------

UAS_REPLY = """<send{retrans}><![CDATA[
SIP/2.0 {status}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
{extra}Content-Length: {length}
{body}
]]></send>
"""
UAS_RECV_ACK = '<recv request="ACK" crlf="true"/>\n'


def uas_reply(status: str, extra: str = "") -> str:
    """A reply without a body (180, a challenge, a refusal) to the request just received."""
    return UAS_REPLY.format(retrans="", status=status, extra=extra, length="0", body="")


def uas_answer(payloads: str = "8", extra: str = "", status: str = "200 OK") -> str:
    """200 OK (resent until the ACK arrives), or a 183 with early media, with an SDP answer (`payloads` offered) and
    `extra` header lines."""
    body = "\n" + sdp(payloads).rstrip("\n")
    return UAS_REPLY.format(
        retrans=' retrans="500"' if status.startswith("2") else "",
        status=status,
        extra=f"{extra}Content-Type: application/sdp\n",
        length="[len]",
        body=body,
    )


def received_invites(folder: Path, credentials_header: str) -> list[tuple[str, str | None]]:
    """The INVITEs a SIPp UAS received (from its message log, -trace_msg): each one's request line and its
    `credentials_header` (Authorization, Proxy-Authorization), if any."""
    text = "\n".join(path.read_text(errors="replace") for path in folder.glob("*messages.log"))
    found = []
    for message in re.split(r"\n(?=INVITE sip:)", text)[1:]:
        head = message.split("\n\n", 1)[0]
        value = re.search(rf"^{credentials_header}: *(.+)$", head, re.MULTILINE | re.IGNORECASE)
        found.append((head.splitlines()[0], value.group(1).strip() if value else None))
    return found

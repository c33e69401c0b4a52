"""The socket option audit: every option getsockopt can read from a unix,
TCP, UDP, UDP-Lite, ICMP (ping), raw IP (IPv4 and IPv6), netlink or
AF_PACKET socket, and what procsnap does with it.

UDP-Lite, ping and raw sockets are datagram sockets of the same IP
layer as UDP: they are judged by UDP's rows at the levels they answer at
(``LIKE``), then by rows of their own, which win (``entries``).

Each option is one of:

* SAVED      -- dumped into CRIU's fields (sk_opts_entry, ip_opts_entry,
               tcp_opts_entry, tcp_stream_entry, inet_sk_entry) and set
               again at restore (``note`` names the field);
* REFUSED    -- not restored, so a socket where it differs from the
               default refuses the dump, naming the pid, fd, socket and
               option.  The default is what a fresh socket of the same
               family, type and protocol reports in our network
               namespace, so defaults that follow a sysctl are right;
* IRRELEVANT -- nothing a restore must give back (``note`` says why);
* INEXACT    -- comes back different and cannot be refused without
               refusing nearly every socket (``note`` says how); listed
               in the README's limits, for the fidelity issue.

An option the table does not know, whose number the kernel answers for
the reference socket, is compared as if REFUSED (``audit``): a new kernel
option that a task has set shows up as unknown, it is not skipped.
``tests/unit/test_sockopts.py`` probes the running kernel and fails on any
readable number missing from the table.

Options that cannot be read at all, and so escape this audit (README):
multicast group memberships (IP_ADD_MEMBERSHIP & co.), BPF programs of a
reuseport group (SO_ATTACH_REUSEPORT_*BPF), TCP-MD5 and TCP-AO keys.
"""
from __future__ import annotations

import errno
import select
import socket
from ..record import record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ..errors import Unsupported
from ..kernel import netns

if TYPE_CHECKING:
    from ..tasks import DumpContext

SAVED, REFUSED, IRRELEVANT, INEXACT = "saved", "refused", "irrelevant", "inexact"

SOL_SOCKET = socket.SOL_SOCKET
SOL_IP = socket.IPPROTO_IP
SOL_IPV6 = socket.IPPROTO_IPV6
SOL_TCP = socket.IPPROTO_TCP
SOL_UDP = socket.IPPROTO_UDP
SOL_ICMPV6 = 58
SOL_UDPLITE = 136
SOL_RAW = 255
SOL_NETLINK = 270
SOL_PACKET = 263
LEVELS = {SOL_NETLINK: "SOL_NETLINK", SOL_PACKET: "SOL_PACKET", SOL_SOCKET: "SOL_SOCKET", SOL_IP: "SOL_IP", SOL_IPV6: "SOL_IPV6",
          SOL_TCP: "SOL_TCP", SOL_UDP: "SOL_UDP", SOL_ICMPV6: "SOL_ICMPV6",
          SOL_UDPLITE: "SOL_UDPLITE", SOL_RAW: "SOL_RAW"}

# socket kinds the table speaks of
UNIX = frozenset({"unix"})
TCP = frozenset({"tcp4", "tcp6"})
UDP = frozenset({"udp4", "udp6"})
INET = TCP | UDP
V4 = frozenset({"tcp4", "udp4"})
V6 = frozenset({"tcp6", "udp6"})
UDPLITE = frozenset({"udplite4", "udplite6"})
PING = frozenset({"icmp4", "icmp6"})
RAW4 = frozenset({"raw4"})
RAW6 = frozenset({"raw6"})
RAW = RAW4 | RAW6
NETLINK = frozenset({"netlink"})
PACKET = frozenset({"packet"})
ALL = UNIX | INET
# the kind whose rows a datagram kind of the IP layer starts from
LIKE = {"netlink": "unix", "packet": "unix", "udplite4": "udp4", "udplite6": "udp6", "icmp4": "udp4", "icmp6": "udp6",
        "raw4": "udp4", "raw6": "udp6"}

# which levels a kind answers at (the probe of unknown numbers)
KIND_LEVELS = {"unix": (SOL_SOCKET,),
               "tcp4": (SOL_SOCKET, SOL_IP, SOL_TCP),
               "tcp6": (SOL_SOCKET, SOL_IP, SOL_IPV6, SOL_TCP),
               # udp_getsockopt answers at SOL_UDP and SOL_UDPLITE alike
               "udp4": (SOL_SOCKET, SOL_IP, SOL_UDP, SOL_UDPLITE),
               "udp6": (SOL_SOCKET, SOL_IP, SOL_IPV6, SOL_UDP, SOL_UDPLITE),
               "udplite4": (SOL_SOCKET, SOL_IP, SOL_UDP, SOL_UDPLITE),
               "udplite6": (SOL_SOCKET, SOL_IP, SOL_IPV6, SOL_UDP, SOL_UDPLITE),
               "netlink": (SOL_SOCKET, SOL_NETLINK),
               # SOCK_PACKET sockets answer at SOL_SOCKET only
               "packet": (SOL_SOCKET, SOL_PACKET),
               "icmp4": (SOL_SOCKET, SOL_IP),
               "icmp6": (SOL_SOCKET, SOL_IP, SOL_IPV6),
               "raw4": (SOL_SOCKET, SOL_IP, SOL_RAW),
               # ipv6_getsockopt answers SOL_IP for every type but raw
               "raw6": (SOL_SOCKET, SOL_IPV6, SOL_ICMPV6, SOL_RAW)}
PROBE_RANGE = range(0, 256)
# never read, whatever the kind: SO_ERROR clears the error it reports,
# SO_PEERPIDFD installs a pidfd in the reader, TCP_ZEROCOPY_RECEIVE is a
# receive whose arguments are the read buffer (which getsockopt() leaves
# uninitialised: it answered or not depending on the reader's heap)
NEVER_READ = {(SOL_SOCKET, 4), (SOL_SOCKET, 77), (SOL_TCP, 35)}
READ_SIZE = 256


@record(frozen=True)
class SockOpt:
    level: int
    num: int
    name: str
    how: str
    note: str = ""
    kinds: frozenset[str] = ALL
    # False: on a connected socket the kernel computes the value itself
    # (it cannot be told from one the task set); compared only on sockets
    # that are not connected
    connected: bool = True
    # False: reading it changes the socket (SO_ERROR clears the error) or
    # the reader (SO_PEERPIDFD installs an fd): never read
    read: bool = True


def _o(level: int, num: int, name: str, how: str, note: str = "",
       kinds: frozenset[str] = ALL, connected: bool = True, read: bool = True) -> SockOpt:
    return SockOpt(level, num, name, how, note, kinds, connected, read)


_RO = "read-only: reports the kernel's own state"
_QUERY = "not socket state: a query of another kernel table"
_FROM_SYN = ("an accepted connection gets it from the SYN or its route: checked on sockets "
             "not connected")
_INEXACT_PEER = ("the restored socket reports the restorer's credentials for its peer "
                 "(connect and socketpair run in the restorer)")

TABLE: tuple[SockOpt, ...] = (
    # ---------------------------------------------------------- SOL_SOCKET
    _o(SOL_SOCKET, 1, "SO_DEBUG", REFUSED),
    _o(SOL_SOCKET, 2, "SO_REUSEADDR", SAVED, "sk_opts.reuseaddr", INET | UNIX),
    _o(SOL_SOCKET, 3, "SO_TYPE", IRRELEVANT, "the socket's identity: inet_sk/unix_sk.type"),
    _o(SOL_SOCKET, 4, "SO_ERROR", REFUSED,
       "a pending error; reading would clear it: seen with poll (POLLERR) instead; "
       "kept on a reset TCP connection (tcp.py: read at the dump's commit point, "
       "recreated by an injected RST; refused with --leave-running)",
       read=False),
    _o(SOL_SOCKET, 5, "SO_DONTROUTE", SAVED, "sk_opts.so_dontroute"),
    _o(SOL_SOCKET, 6, "SO_BROADCAST", SAVED, "sk_opts.so_broadcast", INET),
    _o(SOL_SOCKET, 6, "SO_BROADCAST", REFUSED, "", UNIX),
    _o(SOL_SOCKET, 7, "SO_SNDBUF", SAVED, "sk_opts.so_sndbuf (+ so_buf_lock)"),
    _o(SOL_SOCKET, 8, "SO_RCVBUF", SAVED, "sk_opts.so_rcvbuf (+ so_buf_lock)"),
    _o(SOL_SOCKET, 9, "SO_KEEPALIVE", SAVED, "sk_opts.so_keepalive", INET),
    _o(SOL_SOCKET, 9, "SO_KEEPALIVE", REFUSED, "", UNIX),
    _o(SOL_SOCKET, 10, "SO_OOBINLINE", SAVED, "sk_opts.so_oobinline", INET),
    _o(SOL_SOCKET, 10, "SO_OOBINLINE", REFUSED, "", UNIX),
    _o(SOL_SOCKET, 11, "SO_NO_CHECK", SAVED, "sk_opts.so_no_check"),
    _o(SOL_SOCKET, 12, "SO_PRIORITY", SAVED, "sk_opts.so_priority"),
    _o(SOL_SOCKET, 13, "SO_LINGER", SAVED, "sk_opts.so_linger", INET),
    _o(SOL_SOCKET, 13, "SO_LINGER", REFUSED, "", UNIX),
    _o(SOL_SOCKET, 14, "SO_BSDCOMPAT", IRRELEVANT, "a no-op since Linux 2.6"),
    _o(SOL_SOCKET, 15, "SO_REUSEPORT", SAVED, "sk_opts.so_reuseport", INET),
    _o(SOL_SOCKET, 15, "SO_REUSEPORT", REFUSED, "", UNIX),
    _o(SOL_SOCKET, 16, "SO_PASSCRED", SAVED, "sk_opts.so_passcred", UNIX),
    _o(SOL_SOCKET, 17, "SO_PEERCRED", INEXACT, _INEXACT_PEER),
    _o(SOL_SOCKET, 18, "SO_RCVLOWAT", SAVED, "sk_opts.so_rcvlowat"),
    _o(SOL_SOCKET, 19, "SO_SNDLOWAT", IRRELEVANT, "always 1: Linux does not let it be set"),
    _o(SOL_SOCKET, 20, "SO_RCVTIMEO_OLD", SAVED, "sk_opts.so_rcv_tmo_*"),
    _o(SOL_SOCKET, 21, "SO_SNDTIMEO_OLD", SAVED, "sk_opts.so_snd_tmo_*"),
    _o(SOL_SOCKET, 25, "SO_BINDTODEVICE", SAVED, "sk_opts.so_bound_dev"),
    _o(SOL_SOCKET, 26, "SO_GET_FILTER", SAVED,
       "sk_opts.so_filter (a classic filter; an eBPF one, SO_ATTACH_BPF, is refused "
       "by sockets.get_filter)", read=False),
    _o(SOL_SOCKET, 28, "SO_PEERNAME", IRRELEVANT, "the peer's address: inet_sk.dst_*/unix peer"),
    _o(SOL_SOCKET, 29, "SO_TIMESTAMP_OLD", REFUSED),
    _o(SOL_SOCKET, 30, "SO_ACCEPTCONN", IRRELEVANT, "the LISTEN state: saved as state"),
    _o(SOL_SOCKET, 31, "SO_PEERSEC", INEXACT, _INEXACT_PEER),
    _o(SOL_SOCKET, 34, "SO_PASSSEC", SAVED, "sk_opts.so_passsec", UNIX),
    _o(SOL_SOCKET, 35, "SO_TIMESTAMPNS_OLD", REFUSED),
    _o(SOL_SOCKET, 36, "SO_MARK", SAVED, "sk_opts.so_mark"),
    _o(SOL_SOCKET, 37, "SO_TIMESTAMPING_OLD", REFUSED),
    _o(SOL_SOCKET, 38, "SO_PROTOCOL", IRRELEVANT, "the socket's identity: inet_sk.proto"),
    _o(SOL_SOCKET, 39, "SO_DOMAIN", IRRELEVANT, "the socket's identity: inet_sk.family"),
    _o(SOL_SOCKET, 40, "SO_RXQ_OVFL", REFUSED),
    _o(SOL_SOCKET, 41, "SO_WIFI_STATUS", REFUSED),
    _o(SOL_SOCKET, 42, "SO_PEEK_OFF", REFUSED),
    _o(SOL_SOCKET, 43, "SO_NOFCS", REFUSED),
    _o(SOL_SOCKET, 44, "SO_LOCK_FILTER", SAVED, "sk_opts.so_lock_filter (procsnap's field 128)"),
    _o(SOL_SOCKET, 45, "SO_SELECT_ERR_QUEUE", REFUSED),
    _o(SOL_SOCKET, 46, "SO_BUSY_POLL", REFUSED),
    _o(SOL_SOCKET, 47, "SO_MAX_PACING_RATE", REFUSED),
    _o(SOL_SOCKET, 48, "SO_BPF_EXTENSIONS", IRRELEVANT, "a constant of the kernel"),
    _o(SOL_SOCKET, 49, "SO_INCOMING_CPU", IRRELEVANT,
       "a hint the kernel overwrites with each packet received"),
    _o(SOL_SOCKET, 55, "SO_MEMINFO", IRRELEVANT, _RO),
    _o(SOL_SOCKET, 56, "SO_INCOMING_NAPI_ID", IRRELEVANT, _RO),
    _o(SOL_SOCKET, 57, "SO_COOKIE", IRRELEVANT, "an identity the kernel gives each socket"),
    _o(SOL_SOCKET, 59, "SO_PEERGROUPS", INEXACT, _INEXACT_PEER),
    _o(SOL_SOCKET, 60, "SO_ZEROCOPY", REFUSED),
    _o(SOL_SOCKET, 61, "SO_TXTIME", REFUSED),
    _o(SOL_SOCKET, 62, "SO_BINDTOIFINDEX", SAVED, "sk_opts.so_bound_dev (the same binding)"),
    _o(SOL_SOCKET, 63, "SO_TIMESTAMP_NEW", REFUSED),
    _o(SOL_SOCKET, 64, "SO_TIMESTAMPNS_NEW", REFUSED),
    _o(SOL_SOCKET, 65, "SO_TIMESTAMPING_NEW", REFUSED),
    _o(SOL_SOCKET, 66, "SO_RCVTIMEO_NEW", SAVED, "sk_opts.so_rcv_tmo_*"),
    _o(SOL_SOCKET, 67, "SO_SNDTIMEO_NEW", SAVED, "sk_opts.so_snd_tmo_*"),
    _o(SOL_SOCKET, 69, "SO_PREFER_BUSY_POLL", REFUSED),
    _o(SOL_SOCKET, 70, "SO_BUSY_POLL_BUDGET", REFUSED),
    _o(SOL_SOCKET, 71, "SO_NETNS_COOKIE", IRRELEVANT, "the network namespace's identity"),
    _o(SOL_SOCKET, 72, "SO_BUF_LOCK", SAVED, "sk_opts.so_buf_lock"),
    _o(SOL_SOCKET, 73, "SO_RESERVE_MEM", REFUSED),
    _o(SOL_SOCKET, 74, "SO_TXREHASH", REFUSED),
    _o(SOL_SOCKET, 75, "SO_RCVMARK", REFUSED),
    _o(SOL_SOCKET, 76, "SO_PASSPIDFD", REFUSED),
    _o(SOL_SOCKET, 77, "SO_PEERPIDFD", INEXACT,
       _INEXACT_PEER + "; not read: reading installs a pidfd", read=False),
    _o(SOL_SOCKET, 82, "SO_RCVPRIORITY", REFUSED),
    _o(SOL_SOCKET, 83, "SO_PASSRIGHTS", REFUSED),
    # -------------------------------------------------------------- SOL_IP
    # On an IPv6 socket these govern its IPv4-mapped traffic; CRIU keeps
    # tos and ttl for IPv4 sockets only, so on IPv6 they are refused.
    _o(SOL_IP, 1, "IP_TOS", SAVED, "ip_opts.tos", V4),
    _o(SOL_IP, 1, "IP_TOS", REFUSED, "", V6),
    _o(SOL_IP, 2, "IP_TTL", SAVED, "ip_opts.ttl", V4),
    _o(SOL_IP, 2, "IP_TTL", REFUSED, "", V6),
    _o(SOL_IP, 3, "IP_HDRINCL", IRRELEVANT, "raw sockets only: cannot be set on TCP or UDP",
       INET),
    _o(SOL_IP, 4, "IP_OPTIONS", REFUSED, "", INET),
    _o(SOL_IP, 5, "IP_ROUTER_ALERT", REFUSED, "", INET),
    _o(SOL_IP, 6, "IP_RECVOPTS", REFUSED, "", INET),
    _o(SOL_IP, 7, "IP_RETOPTS", REFUSED, "", INET),
    _o(SOL_IP, 8, "IP_PKTINFO", SAVED, "ip_opts.pktinfo", V4),
    _o(SOL_IP, 8, "IP_PKTINFO", REFUSED, "", V6),
    _o(SOL_IP, 9, "IP_PKTOPTIONS", IRRELEVANT, "read-only: options of the last packet received",
       TCP),
    _o(SOL_IP, 10, "IP_MTU_DISCOVER", REFUSED, "", INET),
    _o(SOL_IP, 11, "IP_RECVERR", REFUSED, "", INET),
    _o(SOL_IP, 12, "IP_RECVTTL", REFUSED, "", INET),
    _o(SOL_IP, 13, "IP_RECVTOS", REFUSED, "", INET),
    _o(SOL_IP, 14, "IP_MTU", IRRELEVANT, "read-only: the route's path MTU", INET),
    _o(SOL_IP, 15, "IP_FREEBIND", SAVED, "ip_opts.freebind", INET),
    _o(SOL_IP, 18, "IP_PASSSEC", REFUSED, "", INET),
    _o(SOL_IP, 19, "IP_TRANSPARENT", REFUSED, "", INET),
    _o(SOL_IP, 20, "IP_RECVORIGDSTADDR", REFUSED, "", INET),
    _o(SOL_IP, 21, "IP_MINTTL", REFUSED, "", INET),
    _o(SOL_IP, 22, "IP_NODEFRAG", REFUSED, "", INET),
    _o(SOL_IP, 23, "IP_CHECKSUM", REFUSED, "", INET),
    _o(SOL_IP, 24, "IP_BIND_ADDRESS_NO_PORT", REFUSED, "", INET),
    _o(SOL_IP, 25, "IP_RECVFRAGSIZE", REFUSED, "", INET),
    _o(SOL_IP, 26, "IP_RECVERR_RFC4884", REFUSED, "", INET),
    _o(SOL_IP, 32, "IP_MULTICAST_IF", REFUSED, _FROM_SYN, INET, connected=False),
    _o(SOL_IP, 33, "IP_MULTICAST_TTL", REFUSED, _FROM_SYN, INET, connected=False),
    _o(SOL_IP, 34, "IP_MULTICAST_LOOP", REFUSED, "", INET),
    _o(SOL_IP, 41, "IP_MSFILTER", IRRELEVANT,
       "a query about one multicast group given by the caller", INET),
    _o(SOL_IP, 48, "MCAST_MSFILTER", IRRELEVANT,
       "a query about one multicast group given by the caller", INET),
    _o(SOL_IP, 49, "IP_MULTICAST_ALL", REFUSED, "", INET),
    _o(SOL_IP, 50, "IP_UNICAST_IF", REFUSED, "", INET),
    _o(SOL_IP, 51, "IP_LOCAL_PORT_RANGE", REFUSED, "", INET),
    _o(SOL_IP, 52, "IP_PROTOCOL", IRRELEVANT, "the socket's identity: inet_sk.proto", INET),
    _o(SOL_IP, 64, "IPT_SO_GET_INFO", IRRELEVANT, _QUERY + " (iptables)", INET),
    _o(SOL_IP, 65, "IPT_SO_GET_ENTRIES", IRRELEVANT, _QUERY + " (iptables)", INET),
    _o(SOL_IP, 66, "IPT_SO_GET_REVISION_MATCH", IRRELEVANT, _QUERY + " (iptables)", INET),
    _o(SOL_IP, 67, "IPT_SO_GET_REVISION_TARGET", IRRELEVANT, _QUERY + " (iptables)", INET),
    _o(SOL_IP, 80, "SO_ORIGINAL_DST", IRRELEVANT, _QUERY + " (conntrack)", INET),
    _o(SOL_IP, 83, "SO_IP_SET", IRRELEVANT, _QUERY + " (ipset)", INET),
    # ------------------------------------------------------------ SOL_IPV6
    _o(SOL_IPV6, 1, "IPV6_ADDRFORM", IRRELEVANT,
       "an action (turn the socket into IPv4), not a setting", V6),
    _o(SOL_IPV6, 2, "IPV6_2292PKTINFO", REFUSED, "", V6),
    _o(SOL_IPV6, 3, "IPV6_2292HOPOPTS", REFUSED, "", V6),
    _o(SOL_IPV6, 4, "IPV6_2292DSTOPTS", REFUSED, "", V6),
    _o(SOL_IPV6, 5, "IPV6_2292RTHDR", REFUSED, "", V6),
    _o(SOL_IPV6, 6, "IPV6_2292PKTOPTIONS", IRRELEVANT,
       "read-only: options of the last packet received", V6),
    _o(SOL_IPV6, 7, "IPV6_CHECKSUM", REFUSED, "", V6),
    _o(SOL_IPV6, 8, "IPV6_2292HOPLIMIT", REFUSED, "", V6),
    _o(SOL_IPV6, 11, "IPV6_FLOWINFO", REFUSED, "", V6),
    _o(SOL_IPV6, 16, "IPV6_UNICAST_HOPS", REFUSED, _FROM_SYN, V6, connected=False),
    _o(SOL_IPV6, 17, "IPV6_MULTICAST_IF", REFUSED, _FROM_SYN, V6, connected=False),
    _o(SOL_IPV6, 18, "IPV6_MULTICAST_HOPS", REFUSED, _FROM_SYN, V6, connected=False),
    _o(SOL_IPV6, 19, "IPV6_MULTICAST_LOOP", REFUSED, "", V6),
    _o(SOL_IPV6, 22, "IPV6_ROUTER_ALERT", REFUSED, "", V6),
    _o(SOL_IPV6, 23, "IPV6_MTU_DISCOVER", REFUSED, "", V6),
    _o(SOL_IPV6, 24, "IPV6_MTU", IRRELEVANT, "read-only: the route's path MTU", V6),
    _o(SOL_IPV6, 25, "IPV6_RECVERR", REFUSED, "", V6),
    _o(SOL_IPV6, 26, "IPV6_V6ONLY", SAVED, "inet_sk.v6only", V6),
    _o(SOL_IPV6, 29, "IPV6_MULTICAST_ALL", REFUSED, "", V6),
    _o(SOL_IPV6, 30, "IPV6_ROUTER_ALERT_ISOLATE", REFUSED, "", V6),
    _o(SOL_IPV6, 31, "IPV6_RECVERR_RFC4884", REFUSED, "", V6),
    _o(SOL_IPV6, 32, "IPV6_FLOWLABEL_MGR", REFUSED, "a flow label lease", V6),
    _o(SOL_IPV6, 33, "IPV6_FLOWINFO_SEND", REFUSED, "", V6),
    _o(SOL_IPV6, 48, "MCAST_MSFILTER", IRRELEVANT,
       "a query about one multicast group given by the caller", V6),
    _o(SOL_IPV6, 49, "IPV6_RECVPKTINFO", SAVED, "ip_opts.pktinfo", V6),
    _o(SOL_IPV6, 50, "IPV6_PKTINFO", REFUSED, "", V6),
    _o(SOL_IPV6, 51, "IPV6_RECVHOPLIMIT", REFUSED, "", V6),
    _o(SOL_IPV6, 53, "IPV6_RECVHOPOPTS", REFUSED, "", V6),
    _o(SOL_IPV6, 54, "IPV6_HOPOPTS", REFUSED, "", V6),
    _o(SOL_IPV6, 55, "IPV6_RTHDRDSTOPTS", REFUSED, "", V6),
    _o(SOL_IPV6, 56, "IPV6_RECVRTHDR", REFUSED, "", V6),
    _o(SOL_IPV6, 57, "IPV6_RTHDR", REFUSED, "", V6),
    _o(SOL_IPV6, 58, "IPV6_RECVDSTOPTS", REFUSED, "", V6),
    _o(SOL_IPV6, 59, "IPV6_DSTOPTS", REFUSED, "", V6),
    _o(SOL_IPV6, 60, "IPV6_RECVPATHMTU", REFUSED, "", V6),
    _o(SOL_IPV6, 61, "IPV6_PATHMTU", IRRELEVANT, "read-only: the route's path MTU", V6),
    _o(SOL_IPV6, 62, "IPV6_DONTFRAG", REFUSED, "", V6),
    _o(SOL_IPV6, 64, "IP6T_SO_GET_INFO", IRRELEVANT, _QUERY + " (ip6tables)", V6),
    _o(SOL_IPV6, 65, "IP6T_SO_GET_ENTRIES", IRRELEVANT, _QUERY + " (ip6tables)", V6),
    _o(SOL_IPV6, 66, "IPV6_RECVTCLASS", REFUSED, "", V6),
    _o(SOL_IPV6, 67, "IPV6_TCLASS", REFUSED, "", V6),
    _o(SOL_IPV6, 68, "IP6T_SO_GET_REVISION_TARGET", IRRELEVANT, _QUERY + " (ip6tables)", V6),
    _o(SOL_IPV6, 70, "IPV6_AUTOFLOWLABEL", REFUSED, "", V6),
    _o(SOL_IPV6, 72, "IPV6_ADDR_PREFERENCES", REFUSED, "", V6),
    _o(SOL_IPV6, 73, "IPV6_MINHOPCOUNT", REFUSED, "", V6),
    _o(SOL_IPV6, 74, "IPV6_RECVORIGDSTADDR", REFUSED, "", V6),
    _o(SOL_IPV6, 75, "IPV6_TRANSPARENT", REFUSED, "", V6),
    _o(SOL_IPV6, 76, "IPV6_UNICAST_IF", REFUSED, "", V6),
    _o(SOL_IPV6, 77, "IPV6_RECVFRAGSIZE", REFUSED, "", V6),
    _o(SOL_IPV6, 78, "IPV6_FREEBIND", SAVED, "ip_opts.freebind (IP_FREEBIND's flag)", V6),
    _o(SOL_IPV6, 80, "IP6T_SO_ORIGINAL_DST", IRRELEVANT, _QUERY + " (conntrack)", V6),
    # ------------------------------------------------------------- SOL_TCP
    _o(SOL_TCP, 1, "TCP_NODELAY", SAVED, "tcp_opts.nodelay", TCP),
    _o(SOL_TCP, 2, "TCP_MAXSEG", REFUSED,
       "on a connection: tcp_stream.mss_clamp; else the value the task set", TCP,
       connected=False),
    _o(SOL_TCP, 3, "TCP_CORK", SAVED, "tcp_opts.cork", TCP),
    _o(SOL_TCP, 4, "TCP_KEEPIDLE", SAVED, "tcp_opts.keepidle", TCP),
    _o(SOL_TCP, 5, "TCP_KEEPINTVL", SAVED, "tcp_opts.keepintvl", TCP),
    _o(SOL_TCP, 6, "TCP_KEEPCNT", SAVED, "tcp_opts.keepcnt", TCP),
    _o(SOL_TCP, 7, "TCP_SYNCNT", REFUSED, "", TCP),
    _o(SOL_TCP, 8, "TCP_LINGER2", REFUSED, "", TCP),
    _o(SOL_TCP, 9, "TCP_DEFER_ACCEPT", REFUSED, "", TCP),
    _o(SOL_TCP, 10, "TCP_WINDOW_CLAMP", REFUSED,
       "on a connection the kernel sets it itself: checked on sockets not connected", TCP,
       connected=False),
    _o(SOL_TCP, 11, "TCP_INFO", IRRELEVANT, _RO + " (the stream state is in tcp_stream)", TCP),
    _o(SOL_TCP, 12, "TCP_QUICKACK", IRRELEVANT,
       "a transient mode the kernel enters and leaves by itself", TCP),
    _o(SOL_TCP, 13, "TCP_CONGESTION", REFUSED, "", TCP),
    _o(SOL_TCP, 16, "TCP_THIN_LINEAR_TIMEOUTS", REFUSED, "", TCP),
    _o(SOL_TCP, 17, "TCP_THIN_DUPACK", REFUSED, "", TCP),
    _o(SOL_TCP, 18, "TCP_USER_TIMEOUT", REFUSED, "", TCP),
    _o(SOL_TCP, 19, "TCP_REPAIR", REFUSED, "", TCP),
    _o(SOL_TCP, 20, "TCP_REPAIR_QUEUE", IRRELEVANT, "the repair interface tcp.py uses", TCP),
    _o(SOL_TCP, 21, "TCP_QUEUE_SEQ", IRRELEVANT, "tcp_stream.inq_seq/outq_seq", TCP),
    _o(SOL_TCP, 22, "TCP_REPAIR_OPTIONS", IRRELEVANT, "tcp_stream.opt_mask & co.", TCP),
    _o(SOL_TCP, 23, "TCP_FASTOPEN", REFUSED, "", TCP),
    _o(SOL_TCP, 24, "TCP_TIMESTAMP", IRRELEVANT, "tcp_stream.timestamp", TCP),
    _o(SOL_TCP, 25, "TCP_NOTSENT_LOWAT", REFUSED, "", TCP),
    _o(SOL_TCP, 26, "TCP_CC_INFO", IRRELEVANT, _RO, TCP),
    _o(SOL_TCP, 27, "TCP_SAVE_SYN", REFUSED, "", TCP),
    _o(SOL_TCP, 28, "TCP_SAVED_SYN", IRRELEVANT,
       "read-only: the SYN of an accepted connection (kept only with TCP_SAVE_SYN, "
       "refused above)", TCP),
    _o(SOL_TCP, 29, "TCP_REPAIR_WINDOW", IRRELEVANT, "tcp_stream.snd_wl1 & co.", TCP),
    _o(SOL_TCP, 30, "TCP_FASTOPEN_CONNECT", REFUSED, "", TCP),
    _o(SOL_TCP, 31, "TCP_ULP", REFUSED, "an upper layer protocol (kTLS, MPTCP...)", TCP),
    _o(SOL_TCP, 33, "TCP_FASTOPEN_KEY", REFUSED, "", TCP),
    _o(SOL_TCP, 34, "TCP_FASTOPEN_NO_COOKIE", REFUSED, "", TCP),
    _o(SOL_TCP, 36, "TCP_INQ", REFUSED, "", TCP),
    _o(SOL_TCP, 37, "TCP_TX_DELAY", REFUSED, "", TCP),
    _o(SOL_TCP, 43, "TCP_IS_MPTCP", IRRELEVANT, _RO, TCP),
    _o(SOL_TCP, 44, "TCP_RTO_MAX_MS", REFUSED, "", TCP),
    _o(SOL_TCP, 45, "TCP_RTO_MIN_US", REFUSED, "", TCP),
    _o(SOL_TCP, 46, "TCP_DELACK_MAX_US", REFUSED, "", TCP),
    # ------------------------------------------------------------- SOL_UDP
    _o(SOL_UDP, 1, "UDP_CORK", REFUSED,
       "its pending data cannot be read out (as criu: a corked socket is refused)", UDP),
    _o(SOL_UDP, 10, "UDPLITE_SEND_CSCOV", IRRELEVANT, "UDP-Lite only: cannot be set on UDP",
       UDP),
    _o(SOL_UDP, 11, "UDPLITE_RECV_CSCOV", IRRELEVANT, "UDP-Lite only: cannot be set on UDP",
       UDP),
    _o(SOL_UDP, 100, "UDP_ENCAP", REFUSED, "", UDP),
    _o(SOL_UDP, 101, "UDP_NO_CHECK6_TX", REFUSED, "", UDP),
    _o(SOL_UDP, 102, "UDP_NO_CHECK6_RX", REFUSED, "", UDP),
    _o(SOL_UDP, 103, "UDP_SEGMENT", REFUSED, "", UDP),
    _o(SOL_UDP, 104, "UDP_GRO", REFUSED, "", UDP),
    # ------------------------------------------------ UDP-Lite (own rows)
    # criu keeps no checksum coverage: refused where the task set one
    _o(SOL_UDP, 10, "UDPLITE_SEND_CSCOV", REFUSED, "", UDPLITE),
    _o(SOL_UDP, 11, "UDPLITE_RECV_CSCOV", REFUSED, "", UDPLITE),
    # ------------------------------------------------ netlink (own rows)
    _o(SOL_NETLINK, 3, "NETLINK_PKTINFO", REFUSED, "", NETLINK),
    _o(SOL_NETLINK, 4, "NETLINK_BROADCAST_ERROR", REFUSED, "", NETLINK),
    _o(SOL_NETLINK, 5, "NETLINK_NO_ENOBUFS", REFUSED, "", NETLINK),
    _o(SOL_NETLINK, 8, "NETLINK_LISTEN_ALL_NSID", REFUSED, "", NETLINK),
    _o(SOL_NETLINK, 9, "NETLINK_LIST_MEMBERSHIPS", SAVED, "netlink_sk.groups", NETLINK),
    _o(SOL_NETLINK, 10, "NETLINK_CAP_ACK", REFUSED, "", NETLINK),
    _o(SOL_NETLINK, 11, "NETLINK_EXT_ACK", REFUSED, "", NETLINK),
    _o(SOL_NETLINK, 12, "NETLINK_GET_STRICT_CHK", REFUSED, "", NETLINK),
    # ------------------------------------------------ AF_PACKET (own rows)
    _o(SOL_SOCKET, 16, "SO_PASSCRED", IRRELEVANT, "packet sockets cannot set it (EOPNOTSUPP)",
       PACKET),
    _o(SOL_SOCKET, 34, "SO_PASSSEC", IRRELEVANT, "packet sockets cannot set it (EOPNOTSUPP)",
       PACKET),
    _o(SOL_PACKET, 6, "PACKET_STATISTICS", INEXACT,
       "counters since they were last read: the restored socket counts from zero; "
       "reading them would reset the task's", PACKET, read=False),
    _o(SOL_PACKET, 7, "PACKET_COPY_THRESH", SAVED, "packet_sock.copy_thresh", PACKET),
    _o(SOL_PACKET, 8, "PACKET_AUXDATA", SAVED, "packet_sock.aux_data", PACKET),
    _o(SOL_PACKET, 9, "PACKET_ORIGDEV", SAVED, "packet_sock.orig_dev", PACKET),
    _o(SOL_PACKET, 10, "PACKET_VERSION", SAVED, "packet_sock.version", PACKET),
    _o(SOL_PACKET, 11, "PACKET_HDRLEN", IRRELEVANT,
       "a query: the frame header length of the ring version passed in", PACKET),
    _o(SOL_PACKET, 12, "PACKET_RESERVE", SAVED, "packet_sock.reserve", PACKET),
    _o(SOL_PACKET, 14, "PACKET_LOSS", SAVED, "packet_sock.loss", PACKET),
    _o(SOL_PACKET, 15, "PACKET_VNET_HDR", SAVED, "packet_sock.vnet_hdr", PACKET),
    _o(SOL_PACKET, 17, "PACKET_TIMESTAMP", SAVED, "packet_sock.timestamp", PACKET),
    _o(SOL_PACKET, 18, "PACKET_FANOUT", SAVED, "packet_sock.fanout (group id and mode)",
       PACKET),
    _o(SOL_PACKET, 19, "PACKET_TX_HAS_OFF", REFUSED, "criu's image has no field", PACKET),
    _o(SOL_PACKET, 20, "PACKET_QDISC_BYPASS", REFUSED, "criu's image has no field", PACKET),
    _o(SOL_PACKET, 21, "PACKET_ROLLOVER_STATS", INEXACT,
       "counters of a fanout rollover: the restored socket counts from zero", PACKET),
    _o(SOL_PACKET, 23, "PACKET_IGNORE_OUTGOING", REFUSED, "criu's image has no field", PACKET),
    _o(SOL_PACKET, 24, "PACKET_VNET_HDR_SZ", SAVED,
       "packet_sock.vnet_hdr (10 bytes; another size is refused by packetsk)", PACKET),
    # ------------------------------------------------ raw IP (own rows)
    _o(SOL_IP, 3, "IP_HDRINCL", SAVED, "ip_opts.raw.hdrincl", RAW4),
    _o(SOL_IP, 22, "IP_NODEFRAG", SAVED, "ip_opts.raw.nodefrag", RAW4),
    _o(SOL_RAW, 1, "ICMP_FILTER", SAVED, "ip_opts.raw.icmpv_filter (IPPROTO_ICMP sockets)",
       RAW4),
    _o(SOL_IPV6, 7, "IPV6_CHECKSUM", REFUSED, "criu keeps no checksum offset", RAW6),
    _o(SOL_RAW, 7, "IPV6_CHECKSUM", REFUSED, "criu keeps no checksum offset", RAW6),
    _o(SOL_IPV6, 36, "IPV6_HDRINCL", SAVED, "ip_opts.raw.hdrincl", RAW6),
    _o(SOL_RAW, 36, "IPV6_HDRINCL", SAVED, "ip_opts.raw.hdrincl (the same flag)", RAW6),
    # multicast routing (mroute6): set through the one MRT6_INIT socket of a
    # routing daemon, refused where not the default
    _o(SOL_IP, 206, "MRT_VERSION", IRRELEVANT, "a constant of the kernel", RAW4),
    _o(SOL_IP, 207, "MRT_ASSERT", REFUSED, "", RAW4),
    _o(SOL_IP, 208, "MRT_PIM", REFUSED, "", RAW4),
    _o(SOL_IPV6, 206, "MRT6_VERSION", IRRELEVANT, "a constant of the kernel", RAW6),
    _o(SOL_IPV6, 207, "MRT6_ASSERT", REFUSED, "", RAW6),
    _o(SOL_IPV6, 208, "MRT6_PIM", REFUSED, "", RAW6),
    _o(SOL_ICMPV6, 1, "ICMPV6_FILTER", SAVED,
       "ip_opts.raw.icmpv_filter (IPPROTO_ICMPV6 sockets)", RAW6),
)
# udp_getsockopt answers at SOL_UDPLITE as at SOL_UDP, for UDP and
# UDP-Lite sockets alike: the same rows at both levels
TABLE += tuple(
    _o(SOL_UDPLITE, o.num, o.name, o.how, o.note, o.kinds, o.connected, o.read)
    for o in TABLE if o.level == SOL_UDP)


def kind_of(sk: socket.socket) -> str | None:
    """The table's name for a socket's kind, or None if procsnap has none."""
    if sk.family == socket.AF_UNIX:
        return "unix"
    if sk.family == socket.AF_NETLINK:
        return "netlink"
    if sk.family == socket.AF_PACKET:
        return "packet"
    v = {socket.AF_INET: "4", socket.AF_INET6: "6"}.get(sk.family)
    if v is None:
        return None
    if sk.type == socket.SOCK_RAW:
        return "raw" + v
    p = {(socket.SOCK_STREAM, socket.IPPROTO_TCP): "tcp",
         (socket.SOCK_DGRAM, socket.IPPROTO_UDP): "udp",
         (socket.SOCK_DGRAM, SOL_UDPLITE): "udplite",
         (socket.SOCK_DGRAM, socket.IPPROTO_ICMP): "icmp",
         (socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6): "icmp"}.get((sk.type, sk.proto))
    return None if p is None else p + v


def entries(kind: str) -> dict[tuple[int, int], SockOpt]:
    """The table's entries for one kind, by (level, number): those of the
    kind it is built like (``LIKE``) at the levels it answers at, then its
    own, which win."""
    out: dict[tuple[int, int], SockOpt] = {}
    like = LIKE.get(kind)
    if like is not None:
        out = {(o.level, o.num): o for o in TABLE
               if like in o.kinds and o.level in KIND_LEVELS[kind]}
    out.update({(o.level, o.num): o for o in TABLE if kind in o.kinds})
    return out


def read(sk: socket.socket, level: int, num: int) -> bytes | int:
    """The option's bytes, or the errno reading it gave."""
    try:
        return sk.getsockopt(level, num, READ_SIZE)
    except OSError as exc:
        return exc.errno or -1


def _show(v: bytes | int) -> str:
    if isinstance(v, int):
        return f"unreadable ({errno.errorcode.get(v, v)})"
    if len(v) == 4:
        return str(int.from_bytes(v, "little", signed=True))
    if len(v) > 1 and v[-1:] == b"\0" and v[:-1].rstrip(b"\0").isascii() and v[0]:
        return repr(v.rstrip(b"\0").decode())
    return "0x" + v.hex() if v else "empty"


def _unknown(ctx: "DumpContext", kind: str, ref: socket.socket) -> list[tuple[int, int]]:
    """Numbers the kernel answers for a fresh socket of this kind that the
    table does not know (once a dump per kind)."""
    cache = ctx.kind_state.setdefault("sockopts", {}).setdefault("unknown", {})
    if kind not in cache:
        known = entries(kind)
        found = []
        for level in KIND_LEVELS[kind]:
            for num in PROBE_RANGE:
                if (level, num) in known or (level, num) in NEVER_READ:
                    continue
                v = read(ref, level, num)
                if not isinstance(v, int) or v not in (errno.ENOPROTOOPT, errno.EOPNOTSUPP,
                                                       errno.EINVAL):
                    found.append((level, num))
        cache[kind] = found
    return cache[kind]  # type: ignore[no-any-return]


def reference(ctx: "DumpContext", sk: socket.socket) -> socket.socket:
    """A fresh socket of ``sk``'s family, type and protocol: the defaults
    of this kernel and network namespace, sysctls included."""
    refs = ctx.kind_state.setdefault("sockopts", {}).setdefault("refs", {})
    key = (sk.family, sk.type, sk.proto)
    ref = refs.get(key)
    if ref is None:
        with netns.inside(ctx.tasks[0].pid):  # the tree's namespace: its sysctls
            ref = socket.socket(*key)
        refs[key] = ref
        if len(refs) == 1:
            def close(keep: bool) -> None:
                for r in refs.values():
                    r.close()
            ctx.cleanups.append(close)
    return ref  # type: ignore[no-any-return]


def audit(ctx: "DumpContext", what: str, sk: socket.socket, connected: bool,
          error_ok: bool = False) -> bool:
    """Refuse ``sk`` if an option procsnap does not restore differs from
    its default, or it has an error pending, or an unknown option differs.
    ``connected``: a TCP connection (options the kernel computes for a
    connection are then not compared).  ``error_ok``: the caller keeps a
    pending error itself (a reset TCP connection, tcp.py); then True
    tells that one is pending.  (Every option that queues errors --
    IP_RECVERR, SO_TIMESTAMPING, SO_ZEROCOPY -- is refused above when set,
    so POLLERR then means the socket's own error, sk_err, alone.)"""
    kind = kind_of(sk)
    if kind is None:
        return False
    ref = reference(ctx, sk)
    for (level, num), o in entries(kind).items():
        if o.how != REFUSED or not o.read or (connected and not o.connected):
            continue
        got, want = read(sk, level, num), read(ref, level, num)
        if got != want:
            raise Unsupported(f"{what}: {o.name} is {_show(got)}, not the default "
                              f"{_show(want)}; procsnap cannot restore it")
    for level, num in _unknown(ctx, kind, ref):
        got, want = read(sk, level, num), read(ref, level, num)
        if got != want:
            raise Unsupported(f"{what}: socket option {LEVELS.get(level, level)} {num}, "
                              f"unknown to procsnap, is {_show(got)}, not the default "
                              f"{_show(want)}")
    # SO_ERROR would clear what it reports: poll sees it without a trace
    if not error_pending(sk):
        return False
    if error_ok:
        return True
    raise Unsupported(f"{what}: an error is pending on the socket (SO_ERROR or its "
                      "error queue); procsnap cannot restore it")


def error_pending(sk: socket.socket) -> bool:
    """POLLERR: an error (sk_err) or its error queue, seen without a trace
    (SO_ERROR would clear what it reports)."""
    p = select.poll()
    p.register(sk.fileno(), select.POLLERR)
    return any(ev & select.POLLERR for _fd, ev in p.poll(0))

"""criu's command line as procsnap.criu reads it (no process is touched)."""
from __future__ import annotations

from pathlib import Path

import pytest

from procsnap.criu import options as O


def parse(*argv: str, env: dict[str, str] | None = None) -> O.Parsed:
    return O.parse(list(argv), env={} if env is None else env)


def test_command_anywhere_short_clusters_and_long_forms() -> None:
    p = parse("--no-default-config", "dump", "-jRt123", "-D", "d", "--log-file=x.log",
              "--ghost-lim", "5M")
    assert p.command == "dump"
    assert p.flag("shell-job") and p.has("leave-running")
    assert p.last("tree") == "123" and p.last("images-dir") == "d"
    assert p.last("log-file") == "x.log" and p.last("ghost-limit") == "5M"


@pytest.mark.parametrize("args, level", [
    ((), 2), (("-v",), 3), (("-vvv",), 5), (("-v4",), 4), (("--verbosity=4",), 4),
    (("-verbosity=0",), 0),          # what zdtm.py passes to `criu check`
    (("-v0", "-v"), 1),
])
def test_verbosity_as_criu(args: tuple[str, ...], level: int) -> None:
    assert parse("check", *args).log_level == level


def test_no_form_of_boolean_options() -> None:
    p = parse("dump", "--tcp-established", "--no-tcp-established")
    assert not p.flag("tcp-established")
    with pytest.raises(O.UsageError, match="--no-tree"):
        parse("dump", "--no-tree")   # -t is not a boolean option


@pytest.mark.parametrize("argv, words", [
    (("dump", "--bogus"), "'--bogus'"),
    (("dump", "-q"), "'q'"),
    (("dump", "-t"), "'t'"),
    (("dump", "--tcp"), "ambiguous"),
    (("dump", "--leave-running=1"), "--leave-running"),
])
def test_bad_options_name_themselves(argv: tuple[str, ...], words: str) -> None:
    with pytest.raises(O.UsageError, match=words.replace("-", r"\-").replace("'", "'")):
        parse(*argv)


def test_refused_options_are_named_with_the_reason() -> None:
    assert O.refused(parse("dump", "-t", "1", "--tcp-established")) is None
    msg = O.refused(parse("dump", "-t", "1", "--skip-mnt", "/srv"))
    assert msg is not None and msg.startswith("option --skip-mnt /srv is not supported")
    assert "mount namespaces" in msg
    assert O.refused(parse("dump", "-s")) is not None  # --leave-stopped
    # every criu option is in the table with a kind, and refusals say why
    for o in O.TABLE:
        assert o.how in (O.MAP, O.ACCEPT, O.REFUSE)
        if o.how != O.MAP:
            assert o.note, o.name


def test_config_files_in_criu_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    glob = tmp_path / "default.conf"
    glob.write_text("# global\ntcp-established\nghost-limit 1K   # small\n")
    home = tmp_path / "home"
    (home / ".criu").mkdir(parents=True)
    (home / ".criu" / "default.conf").write_text("ghost-limit 2K\n")
    env_cfg = tmp_path / "env.conf"
    env_cfg.write_text("file-locks\n")
    cli_cfg = tmp_path / "cli.conf"
    cli_cfg.write_text('log-file "my log.txt"\n')
    monkeypatch.setattr(O, "GLOBAL_CONFIG", str(glob))
    env = {"HOME": str(home), "CRIU_CONFIG_FILE": str(env_cfg)}

    p = parse("dump", "-t", "1", env=env)
    assert p.flag("tcp-established") and p.flag("file-locks")
    assert p.last("ghost-limit") == "2K"              # the user's file comes after /etc's
    assert p.config_files == [str(glob), str(home / ".criu/default.conf"), str(env_cfg)]

    p = parse("dump", "--ghost-limit", "3K", env=env)
    assert p.last("ghost-limit") == "3K"              # argv last

    p = parse("dump", "--no-default-config", env=env)
    assert not p.flag("tcp-established") and p.flag("file-locks")  # env file still read

    p = parse("dump", "--config", str(cli_cfg), env=env)  # --config skips the defaults
    assert p.last("log-file") == "my log.txt" and not p.flag("tcp-established")

    with pytest.raises(O.UsageError, match="no such file"):
        parse("dump", "--config", str(tmp_path / "missing"), env={})


def test_config_file_bad_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.conf"
    cfg.write_text("ghost-limit 1K 2K\n")
    with pytest.raises(O.UsageError, match="one option"):
        parse("dump", "--config", str(cfg))


def test_help_lists_every_option() -> None:
    text = O.help_text()
    for o in O.TABLE:
        assert f"--{o.name}" in text
    assert "--file-locks" in text and "Accepted, already procsnap's behaviour" in text


# What Debian 12's LXC 5.0.2 passes (../shared/lxc/criu-argv-lxc-5.0.2.txt).
_COMMON = ("--tcp-established --file-locks --link-remap --manage-cgroups=full "
           "--ext-mount-map auto --enable-external-sharing --enable-external-masters "
           "--enable-fs hugetlbfs --enable-fs tracefs -D /var/tmp/ck -o /var/tmp/ck/x.log "
           "--cgroup-root name=systemd:/lxc.payload.c1 --cgroup-root pids:/lxc.payload.c1")
LXC_DUMP = ("dump " + _COMMON + " --ext-mount-map /usr/lib:usr/lib "
            "--ext-mount-map /sys/kernel/security:sys/kernel/security -t 27212 "
            "--skip-in-flight --freeze-cgroup /sys/fs/cgroup/freezer//lxc.payload.c1 "
            "--ext-mount-map /dev/console:console --external tty[8800:1a] --force-irmap")
LXC_RESTORE = ("restore " + _COMMON + " --ext-mount-map usr/lib:/usr/lib "
               "--ext-mount-map sys/kernel/security:/sys/kernel/security "
               "--root /usr/lib/x86_64-linux-gnu/lxc/rootfs --restore-detached "
               "--restore-sibling --inherit-fd fd[8]:tty[8800:1a] "
               "--ext-mount-map console:/dev/pts/0 --external console:/dev/pts/0")


def test_lxc_dump_command_line_maps_onto_procsnap() -> None:
    from procsnap import criu
    p = parse(*LXC_DUMP.split())
    assert O.refused(p) is None
    criu._check_values(p)
    named, auto = criu._dump_mounts(p)
    assert auto
    assert named == ["mnt[/usr/lib]:usr/lib",
                     "mnt[/sys/kernel/security]:sys/kernel/security",
                     "mnt[/dev/console]:console"]
    assert [criu._external(v, "external") for v in p.values("external")] == ["tty[8800:1a]"]


def test_lxc_restore_command_line_maps_onto_procsnap() -> None:
    from procsnap import criu
    p = parse(*LXC_RESTORE.split())
    assert O.refused(p) is None
    criu._check_values(p)
    maps, auto = criu._restore_mounts(p)
    assert auto
    assert maps == {"usr/lib": "/usr/lib", "sys/kernel/security": "/sys/kernel/security",
                    "console": "/dev/pts/0"}
    assert p.flag("restore-sibling") and p.last("root").endswith("/lxc/rootfs")
    assert dict(criu._inherit(v) for v in p.values("inherit-fd")) == {"tty[8800:1a]": 8}


@pytest.mark.parametrize("args, word", [
    # a bare KEY:PATH at restore is taken only as the repeat of an --ext-mount-map
    (("restore", "--external", "console:/dev/pts/0"), "--external console:/dev/pts/0"),
    (("restore", "--ext-mount-map", "console:/dev/pts/1", "--external", "console:/dev/pts/0"),
     "--external console:/dev/pts/0"),
    (("restore", "--external", "apparmor:unconfined"), "--external apparmor:unconfined"),
    (("restore", "--ext-mount-map", "nocolon"), "--ext-mount-map nocolon"),
])
def test_lxc_restore_externals_refused_by_name(args: tuple[str, ...], word: str) -> None:
    from procsnap import criu
    with pytest.raises(O.UsageError, match=word):
        criu._restore_mounts(parse(*args))


def test_dump_external_kinds() -> None:
    from procsnap import criu
    assert criu._external("mnt[/data]:vol", "external") == "mnt[/data]:vol"
    assert criu._external("mnt[/data]", "external") == "mnt[/data]:/data"
    assert criu._external("tty[8800:01A]", "external") == "tty[8800:1a]"
    with pytest.raises(O.UsageError, match="veth"):
        criu._external("veth[eth0]:br0", "external")
    with pytest.raises(O.UsageError, match="mnt"):
        criu._inherit("fd[3]:mnt[/x]:y")   # not a resource an fd stands for


def test_ext_unix_sk_is_a_flag_both_ways() -> None:
    """criu's -x/--ext-unix-sk (zdtm socket-ext passes it to dump and
    restore): taken, not refused."""
    for cmd in ("dump", "restore"):
        p = parse(cmd, "-x", "-D", "d")
        assert O.refused(p) is None and p.flag("ext-unix-sk")
        assert parse(cmd, "--ext-unix-sk", "-D", "d").flag("ext-unix-sk")


def test_lazy_pages_only_where_done() -> None:
    """restore --lazy-pages and the lazy-pages daemon's options are done;
    criu's dump --lazy-pages (the tree left frozen serving its pages) and
    --page-server with restore are refused by name."""
    assert O.refused(O.parse(["restore", "-D", "d", "--lazy-pages"])) is None
    assert O.refused(O.parse(["lazy-pages", "-D", "d", "--page-server", "--address",
                              "10.0.0.1", "--port", "27"])) is None
    msg = O.refused(O.parse(["dump", "-t", "1", "--lazy-pages"]))
    assert msg is not None and msg.startswith("option --lazy-pages is not supported by "
                                              "procsnap with dump: only restore --lazy-pages")
    msg = O.refused(O.parse(["restore", "-D", "d", "--page-server"]))
    assert msg is not None and "--page-server" in msg

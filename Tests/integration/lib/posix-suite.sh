#!/usr/bin/env bash
# posix-suite.sh DIR: runs file system operations in DIR (empty, writable) and prints a transcript of what
# each one showed: output, error message and exit status, attributes that must not depend on the file
# system (no inode numbers, devices or absolute times). Two file systems that behave the same give the
# same transcript; qtfs-posix.sh diffs a qtfs mount's against a local directory's.
set -u
cd "$1" || exit 1
export LC_ALL=C

step() {  # step DESCRIPTION COMMAND...: one line of transcript per step, output folded in
    local description=$1
    shift
    local output status
    output=$("$@" 2>&1)
    status=$?
    printf '%s | status %d | %s\n' "$description" "$status" "$(printf '%s' "$output" | tr '\n' '~')"
}
attrs() { stat -c '%F %a %s %h %U:%G' "$@"; }
export -f attrs  # for the steps that run bash -c

# Create, read, write, append, truncate.
step "create with content" sh -c 'echo one > f && cat f'
step "append" sh -c 'echo two >> f && cat f'
step "overwrite in the middle" sh -c 'printf XY | dd of=f bs=1 seek=1 conv=notrunc status=none && cat f'
step "attributes of a file" attrs f
step "truncate shorter" bash -c 'truncate -s 3 f && cat f && echo && attrs f'
step "truncate longer reads zeros" sh -c 'truncate -s 10 f && od -An -c f | tr -s " "'
step "O_TRUNC by redirection" bash -c 'echo new > f && cat f && attrs f'
step "O_EXCL refuses an existing file" sh -c 'set -C; echo x > f'
step "O_EXCL creates a new one" sh -c 'set -C; echo x > g && cat g'
step "5 MiB of random data round-trips" bash -c 'head -c 5242880 /dev/urandom > big.src; cp big.src big && cmp big.src big && attrs big'
step "read at offsets" sh -c 'dd if=big bs=4096 skip=300 count=3 status=none | cmp - <(dd if=big.src bs=4096 skip=300 count=3 status=none) && echo same'
step "sparse file" bash -c 'dd if=/dev/zero of=sparse bs=1 count=1 seek=1048575 status=none && attrs sparse && md5sum < sparse'
step "empty file" bash -c ': > empty && attrs empty && wc -c < empty'

# Rename.
step "rename over an existing file" sh -c 'echo a > x && echo b > y && mv y x && cat x && ls x y'
step "rename into a directory" sh -c 'mkdir -p d1 && mv x d1/x && cat d1/x && ls d1'
step "rename a directory with contents" sh -c 'mkdir -p d2/sub && echo deep > d2/sub/file && mv d2 d3 && cat d3/sub/file && ls d2'
step "rename onto a non-empty directory" sh -c 'mkdir -p e1 e2/inner && mv -T e1 e2'
step "rename a file onto itself" sh -c 'echo self > s && mv s ./s; cat s'
step "renamed file still readable through an open descriptor" bash -c 'echo kept > r1; exec 3< r1; mv r1 r2; cat <&3; cat r2'

# Unlink while open.
step "unlink while open for reading" bash -c 'echo still-here > u; exec 3< u; rm u; cat <&3; ls u'
step "unlink while open for writing" bash -c 'exec 4> w; rm w; echo written >&4; ls w; exec 4>&-'

# Hard links.
step "hard link shares content and count" sh -c 'echo linked > h1 && ln h1 h2 && echo more >> h2 && cat h1 && stat -c %h h1 h2'
step "hard links have one inode" sh -c '[ "$(stat -c %i h1)" = "$(stat -c %i h2)" ] && echo same inode'
step "removing one link keeps the other" sh -c 'rm h1 && cat h2 && stat -c %h h2'
step "hard link to a directory is refused" ln d1 dlink
step "hard link onto an existing name is refused" sh -c 'ln h2 f'

# Symbolic links.
step "symbolic link" sh -c 'ln -s f sl && readlink sl && cat sl && stat -c %F sl'
step "dangling symbolic link" sh -c 'ln -s nowhere dangling && readlink dangling && cat dangling'
step "absolute symbolic link target is kept verbatim" sh -c 'ln -s /etc/hostname-nonexistent abs && readlink abs'
step "symbolic link into a subdirectory" sh -c 'ln -s d3/sub subl && cat subl/file && ls subl'
step "lstat of a link" sh -c 'stat -c "%F %s" sl dangling'
step "symlink loop" sh -c 'ln -s loop2 loop1 && ln -s loop1 loop2 && cat loop1'

# Directories.
step "mkdir -p and rmdir" sh -c 'mkdir -p p/q/r && rmdir p/q/r p/q p && ls p'
step "rmdir of a non-empty directory" rmdir d3
step "mkdir over an existing name" mkdir f
step "rm -r of a tree" sh -c 'mkdir -p t/a/b t/c && touch t/a/b/1 t/c/2 && rm -r t && ls t'
step "directory attributes" bash -c 'mkdir dd && chmod 750 dd && attrs dd'
step "link count of a directory with subdirectories" sh -c 'mkdir -p n/x n/y && stat -c %h n'

# Permissions, ownership, xattrs.
step "chmod" bash -c 'chmod 640 f && attrs f'
step "chown" sh -c 'chown 1234:5678 f && stat -c "%u %g" f'
step "setuid bit" sh -c 'echo > suid && chmod 4755 suid && stat -c %a suid'
step "root-only file is not readable by nobody" sh -c 'echo secret > private && chmod 600 private && setpriv --reuid=65534 --regid=65534 --clear-groups cat private'
step "world-readable file is readable by nobody" sh -c 'chmod 644 private && setpriv --reuid=65534 --regid=65534 --clear-groups cat private'
step "nobody cannot create in a root directory" sh -c 'mkdir -p rootdir && chmod 755 rootdir && setpriv --reuid=65534 --regid=65534 --clear-groups touch rootdir/x'
step "nobody creates in a sticky world-writable directory, owns it" sh -c 'mkdir -p tmpdir && chmod 1777 tmpdir && setpriv --reuid=65534 --regid=65534 --clear-groups sh -c "echo hi > tmpdir/mine" && stat -c "%u %g %a" tmpdir/mine'
step "nobody cannot remove root's file in a sticky directory" sh -c 'touch tmpdir/roots && chmod 666 tmpdir/roots && setpriv --reuid=65534 --regid=65534 --clear-groups rm -f tmpdir/roots; ls tmpdir/roots'
step "group of a new file in a setgid directory" sh -c 'mkdir -p sg && chown 0:4321 sg && chmod 2775 sg && touch sg/file && stat -c %g sg/file && mkdir sg/sub && stat -c "%g %a" sg/sub'
step "xattr set and get" sh -c 'setfattr -n user.colour -v blue f && getfattr --only-values -n user.colour f'
step "xattr list" sh -c 'setfattr -n user.size -v large f && getfattr -d f | grep ^user | sort'
step "xattr remove" sh -c 'setfattr -x user.colour f && getfattr -n user.colour f'
step "xattr of a missing name" getfattr -n user.missing f
step "xattr with a binary value" sh -c 'setfattr -n user.bin -v 0x00ff10 f && getfattr -e hex -n user.bin f | grep user'

# Timestamps.
step "set times" sh -c 'touch -d "2001-02-03 04:05:06.789" f && stat -c "%y %x" f'
step "set mtime only" sh -c 'touch -m -d "2010-01-01 00:00:00" f && stat -c "%y" f && stat -c "%x" f'
step "a write moves mtime forward" sh -c 'touch -d "2001-01-01" f; before=$(stat -c %Y f); echo x >> f; after=$(stat -c %Y f); [ "$after" -gt "$before" ] && echo moved'
step "a chmod moves ctime forward" sh -c 'before=$(stat -c %Z f); sleep 1.1; chmod 600 f; after=$(stat -c %Z f); [ "$after" -gt "$before" ] && echo moved'
step "creating a file moves its directory's mtime" sh -c 'mkdir -p tm && touch -d 2001-01-01 tm && touch tm/new && [ "$(stat -c %Y tm)" -gt 978307200 ] && echo moved'

# Names.
step "names with spaces and unicode" sh -c 'touch "a b" "é✓" && ls | grep -E "^(a b|é✓)$"'
step "a name that is not UTF-8" bash -c 'touch $'"'"'\xff\xfe'"'"' && ls | od -c | grep -c "377 376"'
step "a 255-byte name" sh -c 'n=$(printf "%0255d" 0); touch "$n" && ls "$n" | wc -c'
step "a 256-byte name" sh -c 'n=$(printf "%0256d" 0); touch "$n"'

# Big directories.
step "3000 entries listed once each" sh -c 'mkdir many && cd many && seq -f "entry%04g" 1 3000 | xargs touch && ls | wc -l && ls | sort | md5sum && ls -a | sort | uniq -d'
step "readdir sees entries removed and added" sh -c 'cd many && rm entry0001 entry1500 && touch newcomer && ls | wc -l && ls | grep -c -E "^(entry0001|entry1500)$"; ls newcomer'
step "find over a tree" sh -c 'mkdir -p tree/a/b tree/c && touch tree/a/1 tree/a/b/2 tree/c/3 && find tree | sort'
step "du of a tree" sh -c 'du -a --apparent-size -b tree | sort -k2'

# Space.
step "statfs answers" sh -c 'stat -f -c "%n" . >/dev/null && echo ok'

# Cleanup works.
step "remove everything" sh -c 'rm -rf -- ./* && ls -A | wc -l'

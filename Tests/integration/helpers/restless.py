#!/usr/bin/env python3
"""Works through a file system without pausing until a stop file appears, then says how far it got.
Every operation must succeed: the first that fails ends it with the reason.

    restless.py write FILE STOP RESULT     numbered 4 KiB blocks through one descriptor
    restless.py mkdir DIR STOP RESULT      directories DIR/0, DIR/1, ... (DIR must exist)
    restless.py expect COUNT               the bytes COUNT blocks of `write` make, on stdout

RESULT gets the count done, or "error after N: REASON". Block i is the 8 digits of i repeated to 4 KiB, so
that a block lost, repeated or out of order shows. Small steps: a request is nearly always on its way
(each is a round trip to the host), and the volume stays modest.
"""
import os, sys

BLOCK = 4 * 1024


def block(i):
    return b"%08d" % i * (BLOCK // 8)


mode = sys.argv[1]
if mode == "expect":
    for i in range(int(sys.argv[2])):
        sys.stdout.buffer.write(block(i))
    sys.exit(0)

path, stop, result = sys.argv[2:5]
count = 0
try:
    if mode == "write":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        while not os.path.exists(stop):
            data = block(count)
            written = os.write(fd, data)
            if written != len(data):
                raise OSError("short write (%d of %d bytes)" % (written, len(data)))
            count += 1
        os.close(fd)
    elif mode == "mkdir":
        while not os.path.exists(stop):
            os.mkdir(os.path.join(path, str(count)))
            count += 1
    else:
        sys.exit("restless.py: unknown mode %r (write, mkdir, expect)" % mode)
except OSError as error:
    with open(result, "w") as out:
        out.write("error after %d: %s\n" % (count, error))
    sys.exit(1)
with open(result, "w") as out:
    out.write("%d\n" % count)

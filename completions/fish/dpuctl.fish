function __dpuctl_should_offer_completions_for_flags_or_options -a expected_commands
    set -l non_repeating_flags_or_options $argv[2..]
    set -l non_repeating_flags_or_options_absent 0
    set -l positional_index 0
    set -l commands
    __dpuctl_parse_tokens
    test "$commands" = "$expected_commands"; and return $non_repeating_flags_or_options_absent
end

function __dpuctl_should_offer_completions_for_positional -a expected_commands positional_index_comparison expected_positional_index
    set -l non_repeating_flags_or_options
    set -l non_repeating_flags_or_options_absent 0
    set -l positional_index 0
    set -l commands
    __dpuctl_parse_tokens
    test "$commands" = "$expected_commands" -a \( "$positional_index" "$positional_index_comparison" "$expected_positional_index" \)
end

function __dpuctl_parse_tokens -S
    set -l unparsed_tokens (__dpuctl_tokens -pc)
    switch $unparsed_tokens[1]
    case 'dpuctl'
        __dpuctl_parse_subcommand 0 'h/help'
        switch $unparsed_tokens[1]
        case 'rexec'
            __dpuctl_parse_subcommand -r 1 'connect=' 'key=' 'config=' 't/tty' 'T/no-tty' 'e/env=+' 'u/unset=+' 'clear-env' 'exclude-fd=+' 'cwd=' 'daemon-pidfile=' 'h/help'
        case 'rexec-server'
            __dpuctl_parse_subcommand 0 'listen=+' 'key=' 'config=' 'insecure' 'whitelist=' 'allow-uid=+' 'stop-policy=' 'grace=' 'h/help'
        case 'udsproxy'
            __dpuctl_parse_subcommand -r 1 'listen=+' 'key=' 'config=' 'insecure' 'whitelist=' 'peer=' 'h/help'
        case 'qtfs-engine'
            __dpuctl_parse_subcommand -r 1 'listen=+' 'key=' 'config=' 'insecure' 'whitelist=' 'workers=' 'h/help'
        case 'qtfs'
            __dpuctl_parse_subcommand 0 'h/help'
            switch $unparsed_tokens[1]
            case 'mount'
                __dpuctl_parse_subcommand 2 'o=+' 'foreground' 'connect=' 'key=' 'config=' 'h/help'
            end
        case 'rootfs'
            __dpuctl_parse_subcommand 0 'h/help'
            switch $unparsed_tokens[1]
            case 'prepare'
                __dpuctl_parse_subcommand 0 'root=' 'from=' 'from-image=' 'host=' 'force' 'h/help'
            case 'status'
                __dpuctl_parse_subcommand 0 'root=' 'h/help'
            end
        case 'mount'
            __dpuctl_parse_subcommand 0 'h/help'
            switch $unparsed_tokens[1]
            case 'apply'
                __dpuctl_parse_subcommand 0 'plan=' 'root=' 'local-only' 'config=' 'key=' 'h/help'
            case 'revert'
                __dpuctl_parse_subcommand 0 'plan=' 'root=' 'all' 'lazy' 'h/help'
            case 'status'
                __dpuctl_parse_subcommand 0 'plan=' 'root=' 'local-only' 'h/help'
            case 'plan'
                __dpuctl_parse_subcommand 0 'plan=' 'root=' 'local-only' 'as-file' 'h/help'
            end
        case 'key'
            __dpuctl_parse_subcommand 0 'h/help'
            switch $unparsed_tokens[1]
            case 'generate'
                __dpuctl_parse_subcommand 1 'force' 'h/help'
            end
        case 'install-links'
            __dpuctl_parse_subcommand 0 'prefix=' 'force' 'h/help'
        case 'demo'
            __dpuctl_parse_subcommand 0 'h/help'
            switch $unparsed_tokens[1]
            case 'run'
                __dpuctl_parse_subcommand 0 'keep' 'keep-on-failure' 'h/help'
            case 'up'
                __dpuctl_parse_subcommand 0 'keep-on-failure' 'h/help'
            case 'exec'
                __dpuctl_parse_subcommand -r 2 'rootfs' 'h/help'
            case 'down'
                __dpuctl_parse_subcommand 0 'h/help'
            end
        case 'help'
            __dpuctl_parse_subcommand -r 1 
        end
    end
end

function __dpuctl_tokens
    if test (string split -m 1 -f 1 -- . "$FISH_VERSION") -gt 3
        commandline --tokens-raw $argv
    else
        commandline -o $argv
    end
end

function __dpuctl_parse_subcommand -S -a positional_count
    argparse -s r -- $argv
    set -l option_specs $argv[2..]
    set -l is_repeating_positional $_flag_r
    set -el _flag_r
    set -a commands $unparsed_tokens[1]
    set positional_index 0
    while true
        set -e unparsed_tokens[1]
        argparse -sn "$commands" $option_specs -- $unparsed_tokens 2> /dev/null
        set unparsed_tokens $argv
        set positional_index (math $positional_index + 1)
        for non_repeating_flag_or_option in $non_repeating_flags_or_options
            if set -ql "_flag_$(string replace -a - _ -- $non_repeating_flag_or_option)"
                set non_repeating_flags_or_options_absent 1
                break
            end
        end
        test (count $unparsed_tokens) -eq 0 -o \( -z "$is_repeating_positional" -a "$positional_index" -gt "$positional_count" \) && break
    end
end

function __dpuctl_complete_directories
    set -l token (commandline -t)
    string match -- '*/' $token
    set -l subdirs $token*/
    printf %s\n $subdirs
end

function __dpuctl_custom_completion
    set -x SAP_SHELL fish
    set -x SAP_SHELL_VERSION $FISH_VERSION
    set -l tokens (__dpuctl_tokens -p)
    if test -z "$(__dpuctl_tokens -t)"
        set -l index (count (__dpuctl_tokens -pc))
        set tokens $tokens[..$index] \'\' $tokens[(math $index + 1)..]
    end
    command $tokens[1] $argv $tokens
end

complete -c 'dpuctl' -f
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'rexec' -d 'Run a program on the peer machine as if it ran here.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'rexec-server' -d 'Run programs for authenticated rexec clients.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'udsproxy' -d 'Carry unix-socket connections between the host and the DPU.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'qtfs-engine' -d 'Serve whitelisted host paths to the DPU\'s qtfs mounts.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'qtfs' -d 'qtfs client commands.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'rootfs' -d 'Prepare the DPU rootfs that libvirtd runs in.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'mount' -d 'Apply, revert and inspect the DPU rootfs\'s mount plan.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'key' -d 'Manage the pre-shared key that authenticates the peers.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'install-links' -d 'Create a symlink to dpuctl for every applet name (rexec, rexec_server, mount.qtfs, ...).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'demo' -d 'Show the offload on this machine: a simulated host and DPU, libvirt on the DPU, the VM on the host.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl" -eq 1' -fa 'help' -d 'Show subcommand help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" connect' -l 'connect' -d 'Connect here: tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT (wins over CMD_NET_ADDR).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" key' -l 'key' -d 'Pre-shared key file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" config' -l 'config' -d 'dpuctl configuration file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" t tty' -s 't' -l 'tty' -d 'Give the program a terminal (the default when stdin is one).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" T no-tty' -s 'T' -l 'no-tty' -d 'Never give the program a terminal.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec"' -s 'e' -l 'env' -d 'Set a variable for the program (repeatable).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec"' -s 'u' -l 'unset' -d 'Leave a variable out (repeatable).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" clear-env' -l 'clear-env' -d 'Start from an empty environment (then apply -e).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec"' -l 'exclude-fd' -d 'Do not carry these inherited fds above 2 (repeatable; `5`, `5,7` or `all`).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" cwd' -l 'cwd' -d 'Working directory on the peer (default: ours).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" daemon-pidfile' -l 'daemon-pidfile' -d 'The program daemonizes and writes its daemon\'s pid to this file (qemu -daemonize -pidfile): once it exits 0, a stand-in for the daemon stays here and its pid replaces the daemon\'s in the file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server"' -l 'listen' -d 'Listen here (repeatable): tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server" key' -l 'key' -d 'Pre-shared key file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server" config' -l 'config' -d 'dpuctl configuration file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server" insecure' -l 'insecure' -d 'Allow a TCP or vsock listener without a key (anyone who reaches it is trusted).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server" whitelist' -l 'whitelist' -d 'Whitelist file (the original\'s format).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server"' -l 'allow-uid' -d 'A uid allowed on unix sockets (repeatable; default 0).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server" stop-policy' -l 'stop-policy' -d 'On SIGTERM: leave programs running, or terminate them.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server" grace' -l 'grace' -d 'Seconds between SIGTERM and SIGKILL for an abandoned program.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rexec-server" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl udsproxy"' -l 'listen' -d 'Listen here (repeatable): tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl udsproxy" key' -l 'key' -d 'Pre-shared key file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl udsproxy" config' -l 'config' -d 'dpuctl configuration file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl udsproxy" insecure' -l 'insecure' -d 'Allow a TCP or vsock listener without a key (anyone who reaches it is trusted).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl udsproxy" whitelist' -l 'whitelist' -d 'Whitelist file (the original\'s format).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl udsproxy" peer' -l 'peer' -d 'The peer udsproxyd: tcp://HOST:PORT or vsock://CID:PORT.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl udsproxy" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs-engine"' -l 'listen' -d 'Listen here (repeatable): tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs-engine" key' -l 'key' -d 'Pre-shared key file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs-engine" config' -l 'config' -d 'dpuctl configuration file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs-engine" insecure' -l 'insecure' -d 'Allow a TCP or vsock listener without a key (anyone who reaches it is trusted).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs-engine" whitelist' -l 'whitelist' -d 'Whitelist file (the original\'s format).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs-engine" workers' -l 'workers' -d 'Worker threads for file operations.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs-engine" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl qtfs" -eq 1' -fa 'mount' -d 'Mount a host path served by qtfs_engine (what `mount -t qtfs` runs).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs mount"' -s 'o' -d 'Mount options, comma separated (repeatable).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs mount" foreground' -l 'foreground' -d 'Stay in the foreground instead of detaching once the mount is live.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs mount" connect' -l 'connect' -d 'Connect here: tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT (wins over CMD_NET_ADDR).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs mount" key' -l 'key' -d 'Pre-shared key file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs mount" config' -l 'config' -d 'dpuctl configuration file.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl qtfs mount" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl rootfs" -eq 1' -fa 'prepare' -d 'Copy a rootfs from this machine or an image and install dpuctl\'s pieces in it.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl rootfs" -eq 1' -fa 'status' -d 'Report what the rootfs is missing.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs prepare" root' -l 'root' -d 'The rootfs directory.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs prepare" from' -l 'from' -d 'Where to copy from: `host` (this machine).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs prepare" from-image' -l 'from-image' -d 'A qcow2 or raw disk image to copy from.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs prepare" host' -l 'host' -d 'The host\'s rexec address baked into the qemu-kvm wrappers.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs prepare" force' -l 'force' -d 'Write into a non-empty directory that dpuctl did not create.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs prepare" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs status" root' -l 'root' -d 'The rootfs directory.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl rootfs status" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl mount" -eq 1' -fa 'apply' -d 'Mount what the plan says, idempotently; undo this run\'s mounts on failure.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl mount" -eq 1' -fa 'revert' -d 'Unmount everything under the rootfs, in reverse order.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl mount" -eq 1' -fa 'status' -d 'Compare the plan with what is mounted.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl mount" -eq 1' -fa 'plan' -d 'Print the ordered actions without doing anything.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount apply" plan' -l 'plan' -d 'A mount plan file (dpuctl\'s configuration format).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount apply" root' -l 'root' -d 'The rootfs the plan mounts into.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount apply" local-only' -l 'local-only' -d 'Apply everything except the qtfs mounts.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount apply" config' -l 'config' -d 'dpuctl configuration file, passed to the qtfs client ([qtfs] connect = URL).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount apply" key' -l 'key' -d 'Pre-shared key file, passed to the qtfs client.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount apply" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount revert" plan' -l 'plan' -d 'A mount plan file (dpuctl\'s configuration format).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount revert" root' -l 'root' -d 'The rootfs the plan mounts into.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount revert" all' -l 'all' -d 'Also unmount what the plan did not mount.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount revert" lazy' -l 'lazy' -d 'Detach busy mounts lazily instead of failing.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount revert" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount status" plan' -l 'plan' -d 'A mount plan file (dpuctl\'s configuration format).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount status" root' -l 'root' -d 'The rootfs the plan mounts into.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount status" local-only' -l 'local-only' -d 'Compare with what `apply --local-only` mounts.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount status" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount plan" plan' -l 'plan' -d 'A mount plan file (dpuctl\'s configuration format).' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount plan" root' -l 'root' -d 'The rootfs the plan mounts into.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount plan" local-only' -l 'local-only' -d 'Leave out the qtfs mounts, as `apply --local-only` does.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount plan" as-file' -l 'as-file' -d 'Print the plan as a plan file, to start an own plan from.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl mount plan" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl key" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl key" -eq 1' -fa 'generate' -d 'Write a fresh random key with mode 0600.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl key generate" force' -l 'force' -d 'Replace an existing key file.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl key generate" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl install-links" prefix' -l 'prefix' -d 'Install under this prefix.' -rfka ''
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl install-links" force' -l 'force' -d 'Replace files that are in the way.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl install-links" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl demo" -eq 1' -fa 'run' -d 'Build the two machines, start everything, start a VM from the DPU, show where it runs, tear down.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl demo" -eq 1' -fa 'up' -d 'Build the machines and start everything up to libvirt on the DPU, and leave it running.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl demo" -eq 1' -fa 'exec' -d 'Run a command on a kept demo\'s host or DPU.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_positional "dpuctl demo" -eq 1' -fa 'down' -d 'Tear down a kept demo.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo run" keep' -l 'keep' -d 'Leave everything running and print how to enter either side (`dpuctl demo down` ends it).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo run" keep-on-failure' -l 'keep-on-failure' -d 'When a step fails, leave the machines up to look around.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo run" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo up" keep-on-failure' -l 'keep-on-failure' -d 'When a step fails, leave the machines up to look around.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo up" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo exec" rootfs' -l 'rootfs' -d 'On the DPU, run it in the rootfs (where libvirt runs).'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo exec" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'dpuctl' -n '__dpuctl_should_offer_completions_for_flags_or_options "dpuctl demo down" h help' -s 'h' -l 'help' -d 'Show help information.'

function __rexec_should_offer_completions_for_flags_or_options -a expected_commands
    set -l non_repeating_flags_or_options $argv[2..]
    set -l non_repeating_flags_or_options_absent 0
    set -l positional_index 0
    set -l commands
    __rexec_parse_tokens
    test "$commands" = "$expected_commands"; and return $non_repeating_flags_or_options_absent
end

function __rexec_should_offer_completions_for_positional -a expected_commands positional_index_comparison expected_positional_index
    set -l non_repeating_flags_or_options
    set -l non_repeating_flags_or_options_absent 0
    set -l positional_index 0
    set -l commands
    __rexec_parse_tokens
    test "$commands" = "$expected_commands" -a \( "$positional_index" "$positional_index_comparison" "$expected_positional_index" \)
end

function __rexec_parse_tokens -S
    set -l unparsed_tokens (__rexec_tokens -pc)
    switch $unparsed_tokens[1]
    case 'rexec'
        __rexec_parse_subcommand -r 1 'connect=' 'key=' 'config=' 't/tty' 'T/no-tty' 'e/env=+' 'u/unset=+' 'clear-env' 'exclude-fd=+' 'cwd=' 'daemon-pidfile=' 'h/help'
        switch $unparsed_tokens[1]
        case 'help'
            __rexec_parse_subcommand -r 1 
        end
    end
end

function __rexec_tokens
    if test (string split -m 1 -f 1 -- . "$FISH_VERSION") -gt 3
        commandline --tokens-raw $argv
    else
        commandline -o $argv
    end
end

function __rexec_parse_subcommand -S -a positional_count
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

function __rexec_complete_directories
    set -l token (commandline -t)
    string match -- '*/' $token
    set -l subdirs $token*/
    printf %s\n $subdirs
end

function __rexec_custom_completion
    set -x SAP_SHELL fish
    set -x SAP_SHELL_VERSION $FISH_VERSION
    set -l tokens (__rexec_tokens -p)
    if test -z "$(__rexec_tokens -t)"
        set -l index (count (__rexec_tokens -pc))
        set tokens $tokens[..$index] \'\' $tokens[(math $index + 1)..]
    end
    command $tokens[1] $argv $tokens
end

complete -c 'rexec' -f
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" connect' -l 'connect' -d 'Connect here: tcp://HOST:PORT, unix:///PATH or vsock://CID:PORT (wins over CMD_NET_ADDR).' -rfka ''
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" key' -l 'key' -d 'Pre-shared key file.' -rfka ''
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" config' -l 'config' -d 'dpuctl configuration file.' -rfka ''
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" t tty' -s 't' -l 'tty' -d 'Give the program a terminal (the default when stdin is one).'
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" T no-tty' -s 'T' -l 'no-tty' -d 'Never give the program a terminal.'
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec"' -s 'e' -l 'env' -d 'Set a variable for the program (repeatable).' -rfka ''
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec"' -s 'u' -l 'unset' -d 'Leave a variable out (repeatable).' -rfka ''
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" clear-env' -l 'clear-env' -d 'Start from an empty environment (then apply -e).'
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec"' -l 'exclude-fd' -d 'Do not carry these inherited fds above 2 (repeatable; `5`, `5,7` or `all`).' -rfka ''
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" cwd' -l 'cwd' -d 'Working directory on the peer (default: ours).' -rfka ''
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" daemon-pidfile' -l 'daemon-pidfile' -d 'The program daemonizes and writes its daemon\'s pid to this file (qemu -daemonize -pidfile): once it exits 0, a stand-in for the daemon stays here and its pid replaces the daemon\'s in the file.' -rfka ''
complete -c 'rexec' -n '__rexec_should_offer_completions_for_flags_or_options "rexec" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'rexec' -n '__rexec_should_offer_completions_for_positional "rexec" -eq 1' -fa 'help' -d 'Show subcommand help information.'

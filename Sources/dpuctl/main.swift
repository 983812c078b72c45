import DPUCtlCLI

DPUCtl.main(CommandLine.arguments)

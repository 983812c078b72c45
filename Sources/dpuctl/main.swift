import DPUCtlCLI

await DPUCtl.dispatch(CommandLine.arguments)

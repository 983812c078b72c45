public enum DPUCtl { public static func dispatch(_ argv: [String]) async {} }

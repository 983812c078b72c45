/// Where dpuctl looks for its own settings when not told otherwise.
public enum ConfigDefaults {
    public static let path = "/etc/dpuctl/dpuctl.conf"
}

//! apptheus(1), written from the real `apptheus --help` output, so that the
//! man page can never document a flag the binary does not have.
use anyhow::{Context as _, bail};

/// One entry of the help's option lists.
#[derive(Debug, PartialEq, Eq)]
pub struct Flag {
    /// `-h, --help` or `--trust.path`.
    pub names: String,
    /// `<PATHS>`, `[<BOOL>]` or empty.
    pub value: String,
    pub text: String,
}

/// A heading of the help ("Options:", "Kernel collectors:") and its flags.
#[derive(Debug, PartialEq, Eq)]
pub struct Section {
    pub heading: String,
    pub flags: Vec<Flag>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Help {
    pub about: String,
    pub usage: String,
    pub sections: Vec<Section>,
}

/// Parses clap's long help (`--help`), in either of clap's layouts (help
/// text on the flag's line or on the next). Fails on anything it does not
/// recognise rather than writing a page with holes.
pub fn parse(help: &str) -> anyhow::Result<Help> {
    let mut lines = help.lines();
    let mut about = Vec::new();
    let mut usage = None;
    for l in lines.by_ref() {
        if let Some(u) = l.strip_prefix("Usage: ") {
            usage = Some(u.trim().to_string());
            break;
        }
        if !l.trim().is_empty() {
            about.push(l.trim());
        }
    }
    let usage = usage.context("no 'Usage:' line in the help")?;
    let mut sections: Vec<Section> = Vec::new();
    for l in lines {
        if l.trim().is_empty() {
            continue;
        }
        let indent = l.len() - l.trim_start().len();
        let body = l.trim();
        if indent == 0 {
            let Some(heading) = body.strip_suffix(':') else {
                bail!("unexpected line in the help: {l:?}");
            };
            sections.push(Section {
                heading: heading.to_string(),
                flags: Vec::new(),
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            bail!("an option before any heading: {l:?}");
        };
        if body.starts_with('-') && indent <= 6 {
            // "--flag <V>  text": two spaces part the flag from its text.
            let (head, text) = body.split_once("  ").unwrap_or((body, ""));
            let (names, value) = split_names(head);
            section.flags.push(Flag {
                names,
                value,
                text: text.trim().to_string(),
            });
        } else if let Some(f) = section.flags.last_mut() {
            if !f.text.is_empty() {
                f.text.push(' ');
            }
            f.text.push_str(body);
        } else {
            bail!("help text before the first option: {l:?}");
        }
    }
    if !sections.iter().any(|s| s.heading == "Options") {
        bail!("no 'Options:' section in the help");
    }
    if let Some(s) = sections.iter().find(|s| s.flags.is_empty()) {
        bail!("no options under '{}:' in the help", s.heading);
    }
    Ok(Help {
        about: about.join(" "),
        usage,
        sections,
    })
}

/// `--a.b <X>` -> ("--a.b", "<X>"); `-h, --help` -> ("-h, --help", "").
fn split_names(s: &str) -> (String, String) {
    let mut names = Vec::new();
    let mut rest = Vec::new();
    for w in s.split_whitespace() {
        if rest.is_empty() && w.starts_with('-') {
            names.push(w);
        } else {
            rest.push(w);
        }
    }
    (names.join(" "), rest.join(" "))
}

/// Escapes text for roff: backslashes, hyphens (so flags copy and paste as
/// ASCII), and a leading dot or quote that would read as a request.
fn esc(s: &str) -> String {
    let mut out = s.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// The page. `version` is the first line of `apptheus --version`.
pub fn render(h: &Help, version: &str) -> String {
    let mut m = String::new();
    m.push_str(&format!(
        ".TH APPTHEUS 1 \"\" \"{}\" \"System Administration\"\n",
        esc(version)
    ));
    m.push_str(".SH NAME\napptheus \\- ");
    m.push_str(&esc(&h.about));
    m.push_str("\n.SH SYNOPSIS\n");
    m.push_str(&esc(&h.usage));
    m.push_str("\n.SH DESCRIPTION\n");
    m.push_str(&esc(
        "apptheus runs as root, one per compute node. Kernel programs recognise \
         Apptainer's trusted starter (by file identity, at exec) and follow every \
         process of the container; the agent places each container in a cgroup of \
         its own beneath the one it started in, samples its statistics and serves \
         them to Prometheus (and optionally pushes them).",
    ));
    m.push_str("\n.PP\n");
    m.push_str(&esc(
        "Installed from the Debian package, it runs as the systemd service apptheus; \
         its flags are read from APPTHEUS_ARGS in /etc/default/apptheus.",
    ));
    m.push_str("\n.SH OPTIONS\n");
    for (i, section) in h.sections.iter().enumerate() {
        if i > 0 || section.heading != "Options" {
            m.push_str(".SS ");
            m.push_str(&esc(&section.heading));
            m.push('\n');
        }
        flags(&mut m, &section.flags);
    }

    m.push_str(
        ".SH SIGNALS\n.TP\n.B SIGHUP\nResolve the trusted starters again (after an upgrade of Apptainer); \
         \\fBsystemctl reload apptheus\\fR sends it.\n.TP\n.BR SIGTERM \", \" SIGINT\nStop.\n",
    );
    m.push_str(
        ".SH FILES\n.TP\n.I /etc/default/apptheus\nAPPTHEUS_ARGS, the flags of the service.\n\
         .TP\n.I /usr/lib/systemd/system/apptheus.service\nThe systemd unit.\n\
         .TP\n.I /run/apptheus/gateway.sock\nApptainer's monitoring socket.\n\
         .TP\n.I /usr/share/doc/apptheus/README.md\nWhat apptheus is, installing it, the first scrape.\n\
         .TP\n.I /usr/share/doc/apptheus/docs/\nOperating it (flags, the service, upgrades, troubleshooting), \
         metrics, Apptainer and Slurm integration, the security model, compatibility, performance, \
         architecture.\n",
    );
    m.push_str(".SH SEE ALSO\n.BR systemctl (1),\n.BR prometheus (1)\n");
    m
}

fn flags(m: &mut String, flags: &[Flag]) {
    for f in flags {
        m.push_str(".TP\n\\fB");
        m.push_str(&esc(&f.names));
        m.push_str("\\fR");
        if !f.value.is_empty() {
            m.push_str(" \\fI");
            m.push_str(&esc(&f.value));
            m.push_str("\\fR");
        }
        m.push('\n');
        m.push_str(&esc(&f.text));
        m.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "Per-container metrics for Apptainer

Usage: apptheus [OPTIONS]

Options:
      --trust.path <PATHS>
          Trusted starter binaries, separated by ';' and/or given
          several times
      --socket.path <PATH>
          Unix socket [default:
          /run/apptheus/gateway.sock]
      --ebpf.stats [<BOOL>]
          Export statistics [default: false] [possible values:
          true, false]
  -h, --help
          Print help

Kernel collectors:
      --collector.oom         OOM kills per container, counted by the kernel
                              (apptheus_container_memory_oom_kills_total). [default: on]
      --no-collector.oom      Disable the oom collector
";

    #[test]
    fn parses_every_option_and_joins_wrapped_text() {
        let h = parse(HELP).unwrap();
        assert_eq!(h.about, "Per-container metrics for Apptainer");
        assert_eq!(h.usage, "apptheus [OPTIONS]");
        assert_eq!(h.sections.len(), 2);
        let opts = &h.sections[0].flags;
        let names: Vec<&str> = opts.iter().map(|f| f.names.as_str()).collect();
        assert_eq!(
            names,
            [
                "--trust.path",
                "--socket.path",
                "--ebpf.stats",
                "-h, --help"
            ]
        );
        assert_eq!(opts[1].value, "<PATH>");
        assert_eq!(
            opts[1].text,
            "Unix socket [default: /run/apptheus/gateway.sock]"
        );
        assert_eq!(opts[2].value, "[<BOOL>]");
        assert!(opts[2].text.ends_with("[possible values: true, false]"));
        let kernel = &h.sections[1];
        assert_eq!(kernel.heading, "Kernel collectors");
        assert_eq!(kernel.flags[0].names, "--collector.oom");
        assert_eq!(kernel.flags[0].value, "");
        assert_eq!(
            kernel.flags[0].text,
            "OOM kills per container, counted by the kernel \
             (apptheus_container_memory_oom_kills_total). [default: on]"
        );
        assert_eq!(kernel.flags[1].text, "Disable the oom collector");
    }

    #[test]
    fn renders_roff_with_escaped_flags() {
        let page = render(&parse(HELP).unwrap(), "apptheus 0.1.0");
        assert!(page.starts_with(".TH APPTHEUS 1 "));
        assert!(page.contains("\\fB\\-\\-trust.path\\fR \\fI<PATHS>\\fR\n"));
        assert!(page.contains("\\fB\\-h, \\-\\-help\\fR\n"));
        assert!(page.contains(".SS Kernel collectors\n"));
        assert!(!page.contains(".SS Options"));
        // No text line may start with a dot or quote other than requests.
        for l in page.lines() {
            assert!(!l.starts_with('\''), "{l}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(parse("no usage here").is_err());
        assert!(parse("Usage: apptheus\n\nOptions:\n").is_err());
        assert!(parse("Usage: apptheus\nOptions:\n  text without a flag\n").is_err());
        assert!(parse("Usage: apptheus\nOptions:\n  --a  x\nnot a heading\n").is_err());
    }
}

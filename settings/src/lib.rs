//! Every Ballast binary reads its flags from three places, most specific first: the command
//! line, `BALLAST_*` environment variables, and a TOML file named by `--config FILE` (or
//! `BALLAST_CONFIG`). The file uses the flag names (`data-dir` or `data_dir`), so the binary's
//! one configuration struct — its clap definition — stays the single source of truth, and a
//! value from the file goes through exactly the validation a flag would. Unknown keys and
//! values of the wrong shape are refused with the file and the key in the message.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command, CommandFactory, FromArgMatches};

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config {path}: {reason}")]
    Syntax {
        /// File.
        path: String,
        /// Parser message (with line and column).
        reason: String,
    },
    /// A key names no flag, or its value has the wrong shape.
    #[error("config {path}: field `{field}`: {reason}")]
    Field {
        /// File.
        path: String,
        /// Key as written.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The merged flags did not validate (the message names the flag).
    #[error("{0}")]
    Flags(String),
}

/// Parses `T` from the process's arguments, environment and `--config` file. On error the
/// caller prints the message and exits with status 2, like a flag error.
pub fn parse<T: CommandFactory + FromArgMatches>() -> Result<T, SettingsError> {
    parse_from(std::env::args_os().collect())
}

/// [`parse`], printing the error and exiting with status 2 (as for a bad flag) on failure.
pub fn parse_or_exit<T: CommandFactory + FromArgMatches>() -> T {
    parse().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    })
}

/// [`parse`] over explicit arguments (`args[0]` is the program name).
pub fn parse_from<T: CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> Result<T, SettingsError> {
    let command = T::command();
    let merged = match config_path(&args) {
        Some(path) => merge(&command, &path, args)?,
        None => args,
    };
    let matches = command.try_get_matches_from(merged).map_err(flag_error)?;
    T::from_arg_matches(&matches).map_err(flag_error)
}

fn flag_error(error: clap::Error) -> SettingsError {
    // Help and version requests are "errors" to clap: print them and exit normally.
    if matches!(
        error.kind(),
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
    ) {
        error.exit();
    }
    SettingsError::Flags(error.render().to_string())
}

/// `--config FILE`, `--config=FILE` or `BALLAST_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
        if text == "--" {
            break;
        }
    }
    std::env::var_os("BALLAST_CONFIG").map(PathBuf::from)
}

/// Appends the file's values as flags, skipping every flag already given on the command line
/// or through its environment variable. The flags are those of the subcommand named on the
/// command line, if any (`ballast-sim replica --config F`).
fn merge(
    command: &Command,
    path: &Path,
    args: Vec<OsString>,
) -> Result<Vec<OsString>, SettingsError> {
    let top = command;
    let command = args
        .iter()
        .skip(1)
        .find_map(|a| top.find_subcommand(a.to_string_lossy().as_ref()))
        .unwrap_or(top);
    // A subcommand's own flags, then the top level's (global flags such as endpoints).
    let arguments = || command.get_arguments().chain(top.get_arguments());
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: shown.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::Syntax {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    let field_error = |field: &str, reason: String| SettingsError::Field {
        path: shown.clone(),
        field: field.to_string(),
        reason,
    };
    let mut from_file = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| {
                let mut known: Vec<String> = arguments()
                    .filter_map(|a| a.get_long())
                    .filter(|l| *l != "config" && *l != "help" && *l != "version")
                    .map(|l| l.replace('-', "_"))
                    .collect();
                known.sort();
                known.dedup();
                field_error(key, format!("unknown setting; known: {}", known.join(", ")))
            })?;
        let on_command_line = args.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{long}") || a.starts_with(&format!("--{long}="))
        });
        let in_environment = arg
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some());
        if on_command_line || in_environment {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        match (switch, value) {
            (true, toml::Value::Boolean(true)) => from_file.push(format!("--{long}")),
            (true, toml::Value::Boolean(false)) => {}
            (true, other) => {
                return Err(field_error(
                    key,
                    format!("expected true or false, found {}", other.type_str()),
                ));
            }
            (false, value) => {
                let text = scalar_or_list(value).map_err(|reason| field_error(key, reason))?;
                from_file.push(format!("--{long}={text}"));
            }
        }
    }
    let mut merged = args;
    merged.extend(from_file.into_iter().map(OsString::from));
    Ok(merged)
}

fn scalar_or_list(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err("lists hold plain values".to_string())
                }
                other => scalar_or_list(other),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        other => Err(format!(
            "expected a string, number, boolean or list, found a {}",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Args {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "SETTINGS_TEST_ID")]
        id: u64,
        #[arg(long, default_value_t = 50)]
        heartbeat_ms: u64,
        #[arg(long, value_delimiter = ',')]
        join: Vec<String>,
        #[arg(long)]
        bootstrap: bool,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    fn parse(args: &[&str]) -> Result<Args, SettingsError> {
        parse_from(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn file_values_fill_in_and_flags_win() {
        let f = file("id = 3\nheartbeat_ms = 80\njoin = [\"a:1\", \"b:2\"]\nbootstrap = true\n");
        let p = f.path().to_str().expect("path");
        let args = parse(&["x", "--config", p]).expect("parse");
        assert_eq!(
            (args.id, args.heartbeat_ms, args.join.len(), args.bootstrap),
            (3, 80, 2, true)
        );
        let args = parse(&["x", "--heartbeat-ms", "20", &format!("--config={p}")]).expect("parse");
        assert_eq!((args.id, args.heartbeat_ms), (3, 20));
        let f = file("id = 1\n");
        let args = parse(&["x", "--config", f.path().to_str().expect("path")]).expect("parse");
        assert_eq!(args.heartbeat_ms, 50, "defaults still apply");
    }

    #[test]
    fn bad_files_name_the_file_and_the_field() {
        let f = file("id = 1\nhearbeat_ms = 5\n");
        let error = parse(&["x", "--config", f.path().to_str().expect("path")])
            .expect_err("typo")
            .to_string();
        assert!(
            error.contains("field `hearbeat_ms`: unknown setting"),
            "{error}"
        );
        assert!(
            error.contains("heartbeat_ms"),
            "lists the known settings: {error}"
        );
        let f = file("id = \"three\"\n");
        let error = parse(&["x", "--config", f.path().to_str().expect("path")])
            .expect_err("not a number")
            .to_string();
        assert!(error.contains("--id") && error.contains("three"), "{error}");
        let f = file("id = 1\nbootstrap = \"yes\"\n");
        let error = parse(&["x", "--config", f.path().to_str().expect("path")])
            .expect_err("not a bool")
            .to_string();
        assert!(
            error.contains("field `bootstrap`: expected true or false"),
            "{error}"
        );
        let f = file("id = [\n");
        let error = parse(&["x", "--config", f.path().to_str().expect("path")])
            .expect_err("syntax")
            .to_string();
        assert!(
            error.starts_with(&format!("config {}", f.path().display())),
            "{error}"
        );
        let error = parse(&["x", "--config", "/no/such/file.toml"])
            .expect_err("missing")
            .to_string();
        assert!(error.contains("/no/such/file.toml"), "{error}");
    }
}

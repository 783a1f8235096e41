//! A flag parser small enough not to need a dependency: `--name value`, `--name=value` and bare
//! `--switch`, each flag named by the binary that reads it.

use std::collections::HashMap;
use std::str::FromStr;

/// Parsed command-line flags. Unknown flags are an error, reported by [`Args::finish`].
pub struct Args {
    values: HashMap<String, Vec<String>>,
    switches: Vec<String>,
    seen: Vec<String>,
}

impl Args {
    /// Parses `argv` (without the program name). `switches` are the flags that take no value.
    pub fn parse(
        argv: impl IntoIterator<Item = String>,
        switches: &[&str],
    ) -> Result<Self, String> {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut found = Vec::new();
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            if let Some((name, value)) = flag.split_once('=') {
                values
                    .entry(name.to_string())
                    .or_default()
                    .push(value.to_string());
            } else if switches.contains(&flag) {
                found.push(flag.to_string());
            } else {
                let value = it.next().ok_or_else(|| format!("--{flag} needs a value"))?;
                values.entry(flag.to_string()).or_default().push(value);
            }
        }
        Ok(Self {
            values,
            switches: found,
            seen: Vec::new(),
        })
    }

    /// Whether the switch `--name` was given.
    pub fn switch(&mut self, name: &str) -> bool {
        self.seen.push(name.to_string());
        self.switches.iter().any(|s| s == name)
    }

    /// The last value of `--name`, parsed, or `default`.
    pub fn get<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    /// The last value of `--name`, parsed, if given.
    pub fn opt<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.seen.push(name.to_string());
        match self.values.get(name).and_then(|v| v.last()) {
            None => Ok(None),
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|e| format!("--{name} {raw:?}: {e}")),
        }
    }

    /// Every value of a repeatable `--name`.
    pub fn all(&mut self, name: &str) -> Vec<String> {
        self.seen.push(name.to_string());
        self.values.get(name).cloned().unwrap_or_default()
    }

    /// Fails on any flag that no call above asked for.
    pub fn finish(self) -> Result<(), String> {
        let unknown: Vec<&String> = self
            .values
            .keys()
            .chain(self.switches.iter())
            .filter(|k| !self.seen.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown flag(s): {unknown:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, switches: &[&str]) -> Args {
        Args::parse(s.split_whitespace().map(String::from), switches).unwrap()
    }

    #[test]
    fn reads_values_switches_and_equals_forms() {
        let mut a = parse(
            "--n 10 --json --kind=stream --header a:b --header c:d",
            &["json"],
        );
        assert_eq!(a.get("n", 1u32).unwrap(), 10);
        assert!(a.switch("json"));
        assert_eq!(a.get("kind", String::new()).unwrap(), "stream");
        assert_eq!(a.all("header"), ["a:b", "c:d"]);
        assert_eq!(a.opt::<u32>("missing").unwrap(), None);
        a.finish().unwrap();
    }

    #[test]
    fn rejects_unknown_flags_and_positionals() {
        assert!(Args::parse(["-H".to_string()], &[]).is_err());
        let mut a = parse("--n 10 --typo 3", &[]);
        assert_eq!(a.get("n", 1u32).unwrap(), 10);
        assert!(a.finish().unwrap_err().contains("typo"));
    }
}

//! Glob patterns: `*` matches any run of characters (also none), `?` exactly one, everything
//! else itself, ASCII letters case-insensitively (`*Opus*` matches
//! `us.anthropic.claude-opus-4-5`). There is no escape and no character class: model IDs,
//! ARNs, principals and team names do not need them.

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    literal: bool,
}

impl Glob {
    /// Compiles `pattern` (any string is a valid pattern).
    pub fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.to_string(),
            literal: !pattern.contains(['*', '?']),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// How many characters are not wildcards: a measure of how specific the pattern is.
    pub fn specificity(&self) -> usize {
        self.pattern
            .chars()
            .filter(|c| !matches!(c, '*' | '?'))
            .count()
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return self.pattern.eq_ignore_ascii_case(text);
        }
        matches(&self.pattern, text)
    }
}

fn eq(a: char, b: char) -> bool {
    a.eq_ignore_ascii_case(&b)
}

/// Whether `text` matches `pattern` (iterative, with backtracking to the last `*`: linear
/// in practice, no recursion).
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_case() {
        assert!(matches("*opus*", "us.anthropic.claude-opus-4-5"));
        assert!(matches("*OPUS*", "us.anthropic.claude-opus-4-5"));
        assert!(!matches("*opus*", "us.anthropic.claude-sonnet-4-5"));
        assert!(matches("*", ""));
        assert!(matches("*", "anything"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches(
            "arn:aws:bedrock:*:application-inference-profile/*",
            "arn:aws:bedrock:us-east-1:123:application-inference-profile/abc"
        ));
        assert!(matches("*a*b*c", "xxaxxbxxc"));
        assert!(!matches("*a*b*c", "xxaxxbxxcx"));
        assert!(Glob::new("Alice").matches("alice"));
        assert!(!Glob::new("alice").matches("alice2"));
        assert_eq!(Glob::new("*opus*").specificity(), 4);
    }
}

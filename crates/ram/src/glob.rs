//! RAM wildcard patterns: `*` matches any run of characters (including an
//! empty one) and `?` matches exactly one character. There is no escape
//! syntax in RAM, so a literal `*` or `?` can only be matched by a wildcard.
//!
//! Patterns are compiled once at policy-parse time so that evaluation, which
//! runs on every API request, does no allocation and no re-parsing.

/// Whether literal characters compare case-sensitively.
///
/// Only ASCII case is folded: RAM action names are ASCII, and ASCII folding
/// never changes the length of a string, so `?` keeps meaning exactly one
/// character on both sides of the comparison (full Unicode folding would not
/// guarantee that, e.g. `İ` lowercases to two characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    /// Resources (ARNs): `dbinstance/dds-A` and `dbinstance/dds-a` differ.
    Sensitive,
    /// Actions: `dds:describebackups` grants `dds:DescribeBackups`.
    AsciiInsensitive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// `*`
    AnyRun,
    /// `?`
    AnyOne,
    /// Any other character; already ASCII-lowercased for [`Case::AsciiInsensitive`].
    Lit(char),
}

/// A compiled wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
    case: Case,
}

impl Pattern {
    pub(crate) fn new(source: &str, case: Case) -> Self {
        let mut tokens: Vec<Token> = Vec::with_capacity(source.len());
        for c in source.chars() {
            let token = match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyOne,
                c if case == Case::AsciiInsensitive => Token::Lit(c.to_ascii_lowercase()),
                c => Token::Lit(c),
            };
            // `**` means the same as `*`; collapsing runs keeps the matcher's
            // backtracking state to a single star.
            if token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun) {
                continue;
            }
            tokens.push(token);
        }
        Pattern { tokens, case }
    }

    fn literal_eq(&self, pattern_char: char, text_char: char) -> bool {
        match self.case {
            Case::Sensitive => pattern_char == text_char,
            Case::AsciiInsensitive => pattern_char == text_char.to_ascii_lowercase(),
        }
    }

    /// Matches the whole of `text` (not a substring).
    ///
    /// This is the classic two-pointer wildcard algorithm: on a mismatch it
    /// only ever backtracks to the most recent `*`, letting that star absorb
    /// one more character. Backtracking to earlier stars is never needed,
    /// because whatever an earlier star could absorb the latest star can too.
    /// That bounds the work by O(|pattern| x |text|) instead of the
    /// exponential blow-up of naive recursion on patterns like `*a*a*a*b`,
    /// which matters because policy documents are user-supplied.
    ///
    /// Offsets are byte offsets into `text` that always sit on character
    /// boundaries (they only ever advance by `len_utf8`), so `?` consumes a
    /// whole character, never a single byte of a multi-byte one.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let tokens = &self.tokens;
        let mut p = 0; // index into tokens
        let mut t = 0; // byte offset into text
                       // (index of the last `*` seen, text offset where its absorbed run ends).
        let mut last_star: Option<(usize, usize)> = None;

        while let Some(c) = text[t..].chars().next() {
            match tokens.get(p) {
                Some(Token::AnyRun) => {
                    // Start by letting the star absorb nothing.
                    last_star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(Token::AnyOne) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                Some(Token::Lit(l)) if self.literal_eq(*l, c) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                _ => {}
            }
            // Mismatch (or pattern exhausted with text left): grow the last
            // star's run by one character and retry from just after it.
            let Some((star_p, star_t)) = last_star else {
                return false;
            };
            let Some(absorbed) = text[star_t..].chars().next() else {
                return false;
            };
            let resume = star_t + absorbed.len_utf8();
            last_star = Some((star_p, resume));
            p = star_p + 1;
            t = resume;
        }
        // Text consumed: only trailing stars (which may match empty) may remain.
        tokens[p..].iter().all(|t| *t == Token::AnyRun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Obviously-correct exponential reference used only to cross-check
    /// the two-pointer matcher.
    fn naive(pattern: &[char], text: &[char], case: Case) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| naive(rest, &text[i..], case)),
            Some(('?', rest)) => !text.is_empty() && naive(rest, &text[1..], case),
            Some((&p, rest)) => match text.split_first() {
                Some((&c, text_rest)) => {
                    let eq = match case {
                        Case::Sensitive => p == c,
                        Case::AsciiInsensitive => p.eq_ignore_ascii_case(&c),
                    };
                    eq && naive(rest, text_rest, case)
                }
                None => false,
            },
        }
    }

    fn m(pattern: &str, text: &str, case: Case) -> bool {
        Pattern::new(pattern, case).matches(text)
    }

    #[test]
    fn table() {
        use Case::{AsciiInsensitive as I, Sensitive as S};
        let cases: &[(&str, &str, Case, bool)] = &[
            ("*", "", S, true),
            ("*", "anything", S, true),
            ("", "", S, true),
            ("", "a", S, false),
            ("a", "", S, false),
            ("?", "", S, false),
            ("?", "a", S, true),
            ("?", "é", S, true), // one char, two bytes
            ("??", "é", S, false),
            ("a?c", "abc", S, true),
            ("a?c", "ac", S, false),
            ("a*c", "ac", S, true),
            ("a*c", "abbbc", S, true),
            ("a*c", "abbbcd", S, false),
            ("**a**", "xxaxx", S, true),
            ("*a*b", "aaaaaaaab", S, true),
            ("*a*b", "aaaaaaaa", S, false),
            ("dds:Describe*", "dds:DescribeBackups", S, true),
            ("dds:Describe*", "dds:describebackups", S, false),
            ("dds:Describe*", "dds:describebackups", I, true),
            ("DDS:CREATEBACKUP", "dds:CreateBackup", I, true),
            ("dds:*", "ecs:DescribeInstances", I, false),
            ("dds:?reateBackup", "dds:CreateBackup", I, true),
            ("acs:dds:*:*:dbinstance/*", "*", S, false),
            (
                "acs:dds:*:*:dbinstance/dds-a",
                "acs:dds:cn-hangzhou:1:dbinstance/dds-A",
                S,
                false,
            ),
            // Non-ASCII is never folded, even in insensitive mode.
            ("É", "é", I, false),
        ];
        for &(pattern, text, case, want) in cases {
            assert_eq!(
                m(pattern, text, case),
                want,
                "{pattern:?} vs {text:?} ({case:?})"
            );
        }
    }

    #[test]
    fn pathological_pattern_is_fast() {
        // Exponential for naive recursion; must stay quadratic-at-worst here.
        let pattern = "*a".repeat(30) + "b";
        let text = "a".repeat(20_000);
        let started = std::time::Instant::now();
        assert!(!m(&pattern, &text, Case::Sensitive));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    fn case_strategy() -> impl Strategy<Value = Case> {
        prop_oneof![Just(Case::Sensitive), Just(Case::AsciiInsensitive)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        // Small alphabets so that matches (and near-misses) are frequent.
        #[test]
        fn agrees_with_naive_reference(
            pattern in "[abA*?é]{0,8}",
            text in "[abAé*?]{0,10}",
            case in case_strategy(),
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(m(&pattern, &text, case), naive(&p, &t, case));
        }

        #[test]
        fn agrees_with_naive_reference_on_any_unicode(
            pattern in "\\PC{0,6}",
            text in "\\PC{0,8}",
            case in case_strategy(),
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(m(&pattern, &text, case), naive(&p, &t, case));
        }

        #[test]
        fn literal_pattern_matches_itself(text in "[^*?]{0,20}") {
            prop_assert!(m(&text, &text, Case::Sensitive));
        }
    }
}

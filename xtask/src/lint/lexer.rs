//! Lexing: just enough of Rust's to keep comments, strings and char literals out of the way
//! (nested block comments, raw strings, char literals against lifetimes).

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    Open(char),
    Close(char),
    /// A string, char, number or lifetime: nothing of interest, but a token between others.
    Lit,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) line: usize,
}

pub(super) fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Skip a quoted string starting at `i` (the opening `"`); returns the index after it.
    let skip_string = |mut i: usize, line: &mut usize| {
        i += 1;
        while i < c.len() {
            match c[i] {
                '\\' => {
                    if at(i + 1) == '\n' {
                        *line += 1;
                    }
                    i += 2;
                }
                '"' => return i + 1,
                ch => {
                    if ch == '\n' {
                        *line += 1;
                    }
                    i += 1;
                }
            }
        }
        i
    };
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        let tok = match ch {
            '\n' => {
                line += 1;
                i += 1;
                continue;
            }
            _ if ch.is_whitespace() => {
                i += 1;
                continue;
            }
            '/' if at(i + 1) == '/' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if at(i + 1) == '*' => {
                // Block comments nest.
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && at(i + 1) == '/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if c[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
                continue;
            }
            '"' => {
                i = skip_string(i, &mut line);
                Tok::Lit
            }
            '\'' => {
                if at(i + 1) == '\\' {
                    // '\n', '\'', '\u{1F600}'
                    i += 3;
                    while i < c.len() && c[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if at(i + 2) == '\'' {
                    // 'x', including '{' and '"'
                    i += 3;
                } else {
                    // a lifetime or a label
                    i += 1;
                    while is_ident(at(i)) {
                        i += 1;
                    }
                }
                Tok::Lit
            }
            _ if ch.is_ascii_digit() => {
                while is_ident(at(i)) {
                    i += 1;
                }
                Tok::Lit
            }
            _ if is_ident(ch) => {
                let start = i;
                while is_ident(at(i)) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let hashes = (i..).take_while(|&j| at(j) == '#').count();
                if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                    // r"..", r#".."#, br##".."##: ends at a quote followed by as many hashes.
                    i += hashes + 1;
                    while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                        if c[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                    i += hashes + 1;
                    Tok::Lit
                } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                    i = skip_string(i, &mut line);
                    Tok::Lit
                } else if word == "b" && at(i) == '\'' {
                    // b'x', b'\''
                    i += if at(i + 1) == '\\' { 3 } else { 2 };
                    while i < c.len() && c[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                    Tok::Lit
                } else if word == "r" && hashes == 1 && is_ident(at(i + 1)) {
                    // a raw identifier: r#type
                    let start = i + 1;
                    i = start;
                    while is_ident(at(i)) {
                        i += 1;
                    }
                    Tok::Ident(c[start..i].iter().collect())
                } else {
                    Tok::Ident(word)
                }
            }
            ':' if at(i + 1) == ':' => {
                i += 2;
                Tok::PathSep
            }
            '(' | '[' | '{' => {
                i += 1;
                Tok::Open(ch)
            }
            ')' | ']' | '}' => {
                i += 1;
                Tok::Close(ch)
            }
            _ => {
                i += 1;
                Tok::Punct(ch)
            }
        };
        out.push(Token {
            tok,
            line: start_line,
        });
    }
    out
}

/// For each opening delimiter the index of its closing one and the other way round (unbalanced
/// ones pair with the end).
pub(super) fn pair_delimiters(toks: &[Token]) -> Vec<usize> {
    let mut pair = vec![toks.len(); toks.len()];
    let mut open = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match t.tok {
            Tok::Open(_) => open.push(i),
            Tok::Close(_) => {
                if let Some(o) = open.pop() {
                    pair[o] = i;
                    pair[i] = o;
                }
            }
            _ => {}
        }
    }
    pair
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexer_handles_raw_identifiers_and_lifetimes() {
        let toks: Vec<Tok> = lex("r#type 'a 'static x::y").into_iter().map(|t| t.tok).collect();
        assert_eq!(
            toks,
            [
                Tok::Ident("type".into()),
                Tok::Lit,
                Tok::Lit,
                Tok::Ident("x".into()),
                Tok::PathSep,
                Tok::Ident("y".into())
            ]
        );
    }
}

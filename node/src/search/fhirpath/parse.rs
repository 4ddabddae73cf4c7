//! Tokenizing and parsing a FHIRPath expression of the supported subset into an [`Expr`], with a
//! nesting bound; an unsupported construct is a compile error that names it.

use super::{Expr, FhirPathError};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Sym(&'static str),
    End,
}

fn tokenize(src: &str) -> Result<Vec<(usize, Tok)>, FhirPathError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos: usize, msg: &str| FhirPathError::Syntax { pos, msg: msg.into() };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'%' {
            let s = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((s, Tok::Ident(src[s..i].to_string())));
        } else if c == b'`' {
            let s = i + 1;
            let e = src[s..].find('`').ok_or_else(|| err(i, "unterminated `identifier`"))? + s;
            out.push((i, Tok::Ident(src[s..e].to_string())));
            i = e + 1;
        } else if c == b'\'' {
            let mut text = String::new();
            let s = i;
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(err(s, "unterminated string")),
                    Some(b'\\') => {
                        let next = *b.get(i + 1).ok_or_else(|| err(i, "bad escape"))?;
                        text.push(match next {
                            b'n' => '\n',
                            b't' => '\t',
                            other => other as char,
                        });
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = src[i..].chars().next().expect("char");
                        text.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push((s, Tok::Str(text)));
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push((s, Tok::Num(src[s..i].to_string())));
        } else {
            let two = src.get(i..i + 2).unwrap_or("");
            let sym: &'static str = match (two, c) {
                ("!=", _) => "!=",
                ("<=", _) => "<=",
                (">=", _) => ">=",
                (_, b'.') => ".",
                (_, b'(') => "(",
                (_, b')') => ")",
                (_, b'[') => "[",
                (_, b']') => "]",
                (_, b'|') => "|",
                (_, b'=') => "=",
                (_, b',') => ",",
                (_, b'<') => "<",
                (_, b'>') => ">",
                (_, b'+') => "+",
                (_, b'-') => "-",
                (_, b'*') => "*",
                (_, b'/') => "/",
                (_, b'&') => "&",
                (_, b'~') => "~",
                _ => return Err(err(i, &format!("unexpected character {:?}", c as char))),
            };
            out.push((i, Tok::Sym(sym)));
            i += sym.len();
        }
    }
    out.push((src.len(), Tok::End));
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    /// Nesting of sub-expressions (parentheses, function arguments) being parsed.
    depth: usize,
}

/// Deepest nesting of sub-expressions accepted (expressions from clients, such as FHIRPath
/// Patch paths, must not recurse the parser, the evaluator or the tree's drop off the stack).
const MAX_NESTING: usize = 32;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].1
    }

    fn pos(&self) -> usize {
        self.toks[self.at].0
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.at].1.clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn syntax<T>(&self, msg: impl Into<String>) -> Result<T, FhirPathError> {
        Err(FhirPathError::Syntax { pos: self.pos(), msg: msg.into() })
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), FhirPathError> {
        if self.peek() == &Tok::Sym(sym) {
            self.next();
            Ok(())
        } else {
            self.syntax(format!("expected '{sym}', found {:?}", self.peek()))
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == w)
    }

    // implies < or/xor < and < in/contains < equality < comparison < union < is/as < postfix
    fn expr(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.syntax(format!("sub-expressions nest deeper than {MAX_NESTING}"));
        }
        let e = self.or_expr(inside);
        self.depth -= 1;
        e
    }

    fn or_expr(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let mut left = self.and(inside)?;
        loop {
            if self.is_word("or") {
                self.next();
                let right = self.and(inside)?;
                left = Expr::Or(Box::new(left), Box::new(right));
            } else if self.is_word("xor") || self.is_word("implies") {
                return Err(FhirPathError::Unsupported(format!("operator {:?}", self.peek())));
            } else {
                return Ok(left);
            }
        }
    }

    fn and(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let mut left = self.equality(inside)?;
        while self.is_word("and") {
            self.next();
            let right = self.equality(inside)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn equality(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let left = self.union(inside)?;
        match self.peek() {
            Tok::Sym("=") => {
                self.next();
                Ok(Expr::Eq(Box::new(left), Box::new(self.union(inside)?)))
            }
            Tok::Sym("!=") => {
                self.next();
                Ok(Expr::Ne(Box::new(left), Box::new(self.union(inside)?)))
            }
            Tok::Sym(s @ ("<" | ">" | "<=" | ">=" | "~" | "+" | "-" | "*" | "/" | "&")) => {
                Err(FhirPathError::Unsupported(format!("operator '{s}'")))
            }
            Tok::Ident(w) if ["in", "contains", "div", "mod"].contains(&w.as_str()) => {
                Err(FhirPathError::Unsupported(format!("operator '{w}'")))
            }
            _ => Ok(left),
        }
    }

    fn union(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let first = self.typed(inside)?;
        if self.peek() != &Tok::Sym("|") {
            return Ok(first);
        }
        let mut parts = vec![first];
        while self.peek() == &Tok::Sym("|") {
            self.next();
            parts.push(self.typed(inside)?);
        }
        Ok(Expr::Union(parts))
    }

    fn type_name(&mut self) -> Result<String, FhirPathError> {
        match self.next() {
            Tok::Ident(mut t) => {
                // `FHIR.Quantity` / `System.String`
                while self.peek() == &Tok::Sym(".") {
                    self.next();
                    match self.next() {
                        Tok::Ident(n) => t = n,
                        other => return self.syntax(format!("bad type name after '.': {other:?}")),
                    }
                }
                Ok(t)
            }
            other => self.syntax(format!("expected a type name, found {other:?}")),
        }
    }

    fn typed(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let mut e = self.postfix(inside)?;
        loop {
            if self.is_word("as") {
                self.next();
                e = Expr::As(Box::new(e), self.type_name()?);
            } else if self.is_word("is") {
                self.next();
                e = Expr::Is(Box::new(e), self.type_name()?);
            } else {
                return Ok(e);
            }
        }
    }

    fn postfix(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let mut e = self.primary(inside)?;
        loop {
            match self.peek() {
                Tok::Sym(".") => {
                    self.next();
                    let name = match self.next() {
                        Tok::Ident(n) => n,
                        other => return self.syntax(format!("expected a name after '.', found {other:?}")),
                    };
                    e = self.invocation(e, name)?;
                }
                Tok::Sym("[") => {
                    self.next();
                    let n = match self.next() {
                        Tok::Num(n) => n.parse::<usize>().map_err(|_| FhirPathError::Syntax { pos: self.pos(), msg: "bad index".into() })?,
                        other => return self.syntax(format!("expected an index, found {other:?}")),
                    };
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), n);
                }
                _ => return Ok(e),
            }
        }
    }

    /// `focus.name` or `focus.name(args)`.
    fn invocation(&mut self, focus: Expr, name: String) -> Result<Expr, FhirPathError> {
        if self.peek() != &Tok::Sym("(") {
            return Ok(Expr::Child(Box::new(focus), name));
        }
        self.next();
        let f = Box::new(focus);
        let e = match name.as_str() {
            "where" => Expr::Where(f, Box::new(self.expr(true)?)),
            "as" | "ofType" => Expr::As(f, self.type_name()?),
            "is" => Expr::Is(f, self.type_name()?),
            "resolve" => Expr::Resolve(f),
            "first" => Expr::First(f),
            "exists" if self.peek() == &Tok::Sym(")") => Expr::Exists(f),
            "exists" => Expr::Exists(Box::new(Expr::Where(f, Box::new(self.expr(true)?)))),
            "empty" => Expr::Empty(f),
            "not" => Expr::Not(f),
            "extension" => match self.next() {
                Tok::Str(url) => Expr::Extension(f, url),
                other => return self.syntax(format!("extension() takes a string, found {other:?}")),
            },
            other => return Err(FhirPathError::Unsupported(format!("function {other}()"))),
        };
        self.expect(")")?;
        Ok(e)
    }

    fn primary(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        match self.next() {
            Tok::Sym("(") => {
                let e = self.expr(inside)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Ident(w) if w == "true" || w == "false" => Ok(Expr::Bool(w == "true")),
            Tok::Ident(w) if w == "$this" => Ok(Expr::This),
            // The resource being indexed (composite components refer to it).
            Tok::Ident(w) if w == "%resource" => Ok(Expr::Root("Resource".into())),
            Tok::Ident(w) if w.starts_with('%') || w.starts_with('$') => Err(FhirPathError::Unsupported(format!("variable {w}"))),
            Tok::Ident(w) => {
                if self.peek() == &Tok::Sym("(") {
                    // A function on the implicit focus, e.g. `resolve()` inside `where`.
                    self.invocation(Expr::This, w)
                } else if !inside && w.starts_with(|c: char| c.is_ascii_uppercase()) {
                    Ok(Expr::Root(w))
                } else {
                    Ok(Expr::Child(Box::new(Expr::This), w))
                }
            }
            other => self.syntax(format!("unexpected {other:?}")),
        }
    }
}

/// Compiles an expression.
pub fn compile(src: &str) -> Result<Expr, FhirPathError> {
    let mut p = Parser { toks: tokenize(src)?, at: 0, depth: 0 };
    let e = p.expr(false)?;
    if p.peek() != &Tok::End {
        return p.syntax(format!("unexpected {:?} after the expression", p.peek()));
    }
    Ok(e)
}

"""Lines of the library (`dnallm/*.py dnallm/*/*.py`), split into code, docstrings/comments and blank lines by
Python's tokenizer (issue 14 asks that the library get shorter).

    python benchmarks/library_size.py dnallm [OTHER_TREE/dnallm ...]
"""

from __future__ import annotations

import glob
import io
import sys
import tokenize



def count(root: str) -> dict:
    tot=dict(code=0,doc_or_comment=0,blank=0)
    for f in sorted(glob.glob(root+'/*.py')+glob.glob(root+'/*/*.py')):
        src=open(f).read(); lines=src.split('\n')
        if lines and lines[-1]=='': lines=lines[:-1]
        code=set(); doc=set()
        prev=None
        for t in tokenize.generate_tokens(io.StringIO(src).readline):
            if t.type==tokenize.COMMENT: doc.add(t.start[0])
            elif t.type==tokenize.STRING and (prev is None or prev.type in (tokenize.INDENT,tokenize.NEWLINE,tokenize.DEDENT)):
                doc.update(range(t.start[0],t.end[0]+1))
            elif t.type not in (tokenize.NL,tokenize.NEWLINE,tokenize.INDENT,tokenize.DEDENT,tokenize.ENDMARKER):
                code.update(range(t.start[0],t.end[0]+1))
            if t.type not in (tokenize.COMMENT,tokenize.NL): prev=t
        for i,l in enumerate(lines,1):
            if i in code: tot['code']+=1
            elif i in doc: tot['doc_or_comment']+=1
            elif not l.strip(): tot['blank']+=1
            else: tot['code']+=1
    tot['total']=sum(tot.values()); return tot


if __name__ == "__main__":
    for root in sys.argv[1:]:
        print(root, count(root))
